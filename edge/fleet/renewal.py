"""Certificate renewal, an agent service: a node enrolled by an enrollment server renews its short-lived
certificate there before it expires (at RENEW_AT of its life, retrying with back-off), and fetches the fleet's
newest revocation list; `hearth fleet renew` does it at once (renew_now)."""

import json
import logging
import os
import time

from edge.atomic import read_regular, write_atomic
from edge.config import load_config
from edge.errors import EdgeError
from edge.fleet.certificates import REVOKED, CertificateError, read_certificate
from edge.fleet.requests import CERT_DAYS, ClaimError, accept_certificate, renewal_request
from edge.fleet.revocations import load_revocations, store_revocations
from edge.fleet.tls import normalize_pin, pinned_request, post, sibling
from edge.identity import KEY_FILE, Identity, public_key_of
from edge.logsafe import printable
from edge.service import Handle

log = logging.getLogger(__name__)

ENROLL_FILE = "enroll.json"        # the enrollment server's URL and pin, kept for renewals
RENEW_AT = 2 / 3                   # of a certificate's life: when the node renews it
RETRY_FIRST, RETRY_MAX = 60.0, 6 * 3600.0    # a failed renewal is retried after this, doubling up to that
REVOCATIONS_EVERY = 3600.0         # seconds between fetches of the revocation list


class Renewal:
    """A fleet node's certificate over time: when it expires, when it is renewed, why a renewal failed.

    The agent runs it (serve_renewal), not hearth-enroll.service: the agent is what presents the certificate,
    so a renewed one is used at once without a restart, and the agent's status is where the operator looks.
    Blocking HTTPS runs in a worker thread."""

    def __init__(self, agent, enroll: dict | None, retry_first: float = RETRY_FIRST, retry_max: float = RETRY_MAX):
        self.agent = agent
        self.enroll = enroll                 # {"url", "pin", "fleet"} or None (certified by hand: no renewal)
        self.fleet_key = public_key_of(agent.config.fleet_key)
        self.retry_first, self.retry_max = retry_first, retry_max
        self.failures = 0
        self.last_error: str | None = None
        self.next_try: float | None = None
        self.renewed: float | None = None
        self.revocations_at = 0.0

    def info(self) -> dict:
        try:
            return read_certificate(self.agent.cert, self.fleet_key, self.agent.identity.node_id,
                                    expired_ok=True)
        except CertificateError:
            return {"expires": 0, "issued": None, "serial": None}

    def renew_at(self) -> float | None:
        """When the certificate should be renewed (RENEW_AT of its life), None if it never expires."""
        info = self.info()
        if not info["expires"]:
            return None
        issued = info["issued"] or info["expires"] - CERT_DAYS * 86400
        return issued + RENEW_AT * (info["expires"] - issued)

    def status(self) -> dict:
        info = self.info()
        held = REVOKED.get(self.fleet_key)
        return {"serial": info["serial"], "expires": info["expires"] or None, "renew_at": self.renew_at(),
                "server": self.enroll["url"] if self.enroll else None, "renewed": self.renewed,
                "failures": self.failures, "last_error": self.last_error, "next_try": self.next_try,
                "revocations": held.seq if held else None}

    def _renew_blocking(self, timeout: float) -> bytes:
        return renew_certificate(self.enroll, self.agent.identity, self.agent.cert,
                                 os.path.join(self.agent.config.data_dir, self.agent.config.fleet_cert), timeout)

    def _revocations_blocking(self, timeout: float) -> None:
        status, data = pinned_request(sibling(self.enroll["url"], "/revoked"), self.enroll["pin"],
                                      timeout=timeout, limit=1 << 20)
        if status == 200:
            store_revocations(self.agent.config.data_dir, data, self.fleet_key)

    async def step(self, timeout: float = 20) -> None:
        """One round: fetch the revocation list when due, renew the certificate when due (or retry)."""
        import trio
        now = time.time()
        if now - self.revocations_at >= REVOCATIONS_EVERY:
            self.revocations_at = now
            try:
                await trio.to_thread.run_sync(self._revocations_blocking, timeout, abandon_on_cancel=True)
            except Exception as exc:   # noqa: BLE001 - the server's answer, a disk error: never the agent's end
                log.info("fetching the fleet's revocation list failed: %s", printable(str(exc)))
        due = self.renew_at()
        if due is None or now < due or (self.next_try is not None and now < self.next_try):
            return
        try:
            cert = await trio.to_thread.run_sync(self._renew_blocking, timeout, abandon_on_cancel=True)
        except Exception as exc:   # noqa: BLE001 - whatever the server or the disk did, the agent serves on
            self.failures += 1
            self.last_error = str(exc)
            wait = min(self.retry_max, self.retry_first * 2 ** (self.failures - 1))
            self.next_try = time.time() + wait
            log.warning("renewing the fleet certificate failed (%d times; it is kept until it expires, next try "
                        "in %.0f s): %s", self.failures, wait, printable(str(exc)))
            return
        before = self.info()["expires"]
        self.agent.cert = cert
        self.agent.policy.cert = cert     # the transport's Welcome carries the new one from now on
        self.failures, self.last_error, self.next_try, self.renewed = 0, None, None, time.time()
        if self.info()["expires"] <= before + 3600:
            # the server's delegation ends about when this certificate does: asking again each minute would
            # get the same; the operator must renew the delegation (`hearth fleet delegate`)
            self.last_error = ("the enrollment server cannot certify past its delegation's end; the fleet's "
                               "owner renews it with `hearth fleet delegate`")
            self.next_try = time.time() + self.retry_max
        log.info("fleet certificate renewed (expires %s)", time.strftime("%Y-%m-%d %H:%M",
                                                                           time.gmtime(self.info()["expires"])))


def read_enroll(data_dir: str) -> dict | None:
    """The enrollment server this node renews at ({"url", "pin", "fleet"}), None if it was not enrolled."""
    raw = read_regular(os.path.join(data_dir, ENROLL_FILE))
    if raw is None:
        return None
    try:
        enroll = json.loads(raw)
        return {"url": str(enroll["url"]), "pin": normalize_pin(enroll["pin"]), "fleet": str(enroll["fleet"])}
    except (ValueError, KeyError, TypeError, ClaimError):
        raise ClaimError(f"{os.path.join(data_dir, ENROLL_FILE)} is not an enrollment record (url, pin, fleet); "
                         "enroll the node again with a new seed") from None


def renew_certificate(enroll: dict, identity: Identity, cert: bytes, path: str, timeout: float = 20) -> bytes:
    """A new certificate from the enrollment server for this node (shown its current one), checked and
    written to path (keeping the owner of the file it replaces). ClaimError saying why not."""
    answer = post(sibling(enroll["url"], "/renew"), enroll["pin"], renewal_request(identity, cert, enroll["fleet"]),
                  timeout)
    new = accept_certificate(answer, identity, enroll["fleet"])
    try:
        st = os.stat(path)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    except FileNotFoundError:
        owner = None
    write_atomic(path, new, 0o644, owner=owner)
    return new


def renew_now(data_dir: str, timeout: float = 20) -> tuple[dict, str]:
    """`hearth fleet renew`: renew this node's certificate now (a node that was off until it expired); returns
    (the new certificate's fields, its path). EdgeError or OSError saying why not."""
    config = load_config(flags={"data_dir": data_dir})
    enroll = read_enroll(data_dir)
    if enroll is None:
        raise ClaimError(f"this node was not enrolled by an enrollment server (no {data_dir}/enroll.json): its "
                         "certificate is renewed with `hearth fleet sign`")
    identity = Identity.load(os.path.join(data_dir, KEY_FILE))
    path = os.path.join(data_dir, config.fleet_cert or "fleet.cert")
    with open(path, "rb") as f:
        cert = f.read()
    new = renew_certificate(enroll, identity, cert, path, timeout)
    return read_certificate(new, public_key_of(enroll["fleet"]), identity.node_id), path


class RenewalHandle(Handle):
    """The renewal service's handle: its stats are the certificate's status (empty outside a fleet)."""

    def __init__(self, renewal: Renewal | None):
        super().__init__("renewal")
        self.renewal = renewal

    def stats(self) -> dict:
        return self.renewal.status() if self.renewal is not None else {}


async def serve_renewal(agent, *, interval: float = 60.0, retry_first: float = RETRY_FIRST,
                        task_status=None):
    """The agent's enrollment service (fleet admission only): honours the revocation list in the data
    directory before the transport admits anyone, then renews the certificate and fetches newer lists."""
    import trio
    task_status = task_status or trio.TASK_STATUS_IGNORED
    if agent.config.admission != "fleet":
        task_status.started(RenewalHandle(None))
        return
    fleet_key = public_key_of(agent.config.fleet_key)
    await trio.to_thread.run_sync(load_revocations, agent.config.data_dir, fleet_key)
    try:
        enroll = await trio.to_thread.run_sync(read_enroll, agent.config.data_dir)
    except EdgeError as exc:
        log.warning("%s is not used (no renewals): %s", ENROLL_FILE, exc)
        enroll = None
    renewal = Renewal(agent, enroll, retry_first)
    task_status.started(RenewalHandle(renewal))
    if enroll is None:
        return
    while True:
        await renewal.step()
        await trio.sleep(interval)
