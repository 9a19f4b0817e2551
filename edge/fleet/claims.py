"""The fleet's side of enrollment: the claims file (which device holds which token, which node claimed it) and
the answers to claims and renewals, signed with the enrollment key under the fleet key's delegation.

The enrollment server holds no fleet key: an enrollment key and the fleet key's delegation to it
(`hearth fleet delegate`, edge/fleet/certificates.py). A token is bound to the first node id that claims it,
within its claim window (`--claim-days`). The same node claiming again (a power cut before it saved the answer)
gets a certificate again; any other node is refused, and the operator sees which node holds each token and can
revoke it (`hearth fleet claims`). A renewal is answered for a node that holds a token that is not revoked,
presenting a certificate of this fleet for itself (expired is fine: a box that was off for a month comes back),
not on the fleet's revocation list. What remains: a seed read before the device's first boot is still a secret:
whoever claims first with it wins (the real device then gets a 409, and the operator revokes that token and the
stranger's node).
"""

import base64
import contextlib
import fcntl
import hmac
import json
import threading
import time

from edge.atomic import write_json
from edge.fleet.certificates import (REVOKED, CertificateError, check_delegation, read_certificate, serial,
                                     sign_delegated)
from edge.fleet.requests import CERT_DAYS, ClaimError, parse_claim, parse_renewal, proof, token_hash, token_id
from edge.identity import Identity, check_node_id, public_key_of


class Issuer:
    """The enrollment server's signing power: its enrollment key and the fleet key's delegation to it."""

    def __init__(self, key: Identity, delegation: bytes, fleet: str):
        key_of, until = check_delegation(delegation, public_key_of(fleet))
        if key_of != key.public_key:
            raise ClaimError(f"the delegation is for another enrollment key, not {key.node_id}")
        self.key, self.delegation, self.fleet, self.until = key, delegation, fleet, until

    def certify(self, node: str, days: float) -> bytes:
        try:
            return sign_delegated(self.key, self.delegation, node, days)
        except CertificateError as exc:      # the delegation expired while serving
            raise ClaimError(f"this server cannot certify now: {exc}", 503) from None


class Claims:
    """The fleet side: the claims file ({"fleet", "tokens": {token_id: {"hash", "device", "expires" (the claim
    window's end, 0 = none), "node", "serial", "claimed", "revoked"}}}), and the answers to claims and renewals.

    Every change re-reads the file under an exclusive lock and writes it whole, atomically: the operator's
    `hearth fleet claims --revoke` and the running server never undo each other."""

    def __init__(self, path: str, issuer: Issuer | None = None, fleet: str | None = None, broker=None):
        """broker: the BrokerCredentials (edge/fleet/brokerauth.py) answers carry, when the fleet has a broker."""
        self.path = path
        self.issuer = issuer
        self.broker = broker
        self.fleet = issuer.fleet if issuer else fleet
        self._lock = threading.Lock()
        data = self._read()
        if data.get("fleet") != self.fleet:
            raise ClaimError(f"{path} holds claims of fleet {data.get('fleet')}, not of this fleet ({self.fleet})")

    @classmethod
    def of_file(cls, path: str) -> "Claims":
        """The claims file at path as the operator reads and revokes it (no issuer: it answers no claim)."""
        return cls(path, fleet=cls.fleet_of(path))

    @staticmethod
    def fleet_of(path: str) -> str:
        """The fleet id a claims file is for; ClaimError when it is not a claims file."""
        try:
            with open(path) as f:
                return json.load(f).get("fleet", "")
        except (OSError, ValueError, AttributeError) as exc:
            raise ClaimError(f"{path} is not a claims file (`hearth fleet provision --claim-url` writes one): "
                             f"{exc}") from None

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise ClaimError(f"cannot read the claims file {self.path}: {exc}", 500) from None
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), dict):
            raise ClaimError(f"{self.path} is not a claims file (fleet, tokens)", 500)
        return data

    @contextlib.contextmanager
    def _update(self):
        """The claims, read under the lock; written back when the block ends without an exception."""
        with self._lock, open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                write_json(self.path, data)

    @staticmethod
    def create(path: str, fleet: str, devices: dict[str, str], window_days: float = 0) -> None:
        """Write a new claims file for {device name: token} (only the tokens' hashes are kept); each token can
        be claimed for window_days (0: for ever)."""
        public_key_of(fleet)
        until = int(time.time() + window_days * 86400) if window_days else 0
        tokens = {token_id(t): {"hash": token_hash(t), "device": name, "expires": until, "node": None,
                                "serial": None, "claimed": None, "revoked": False}
                  for name, t in devices.items()}
        write_json(path, {"fleet": fleet, "tokens": tokens})

    def devices(self) -> list[dict]:
        with self._lock:
            return sorted(self._read()["tokens"].values(), key=lambda e: e["device"])

    def revoke(self, device: str) -> dict:
        """Revoke a device's token: no claim and no renewal with it from now on."""
        with self._update() as data:
            for entry in data["tokens"].values():
                if entry["device"] == device:
                    entry["revoked"] = True
                    return dict(entry)
        raise ClaimError(f"no device {device!r} in {self.path} (`hearth fleet claims {self.path}` lists them)", 404)

    def _check_fleet(self, body: dict) -> None:
        if body["fleet"] != self.fleet:
            raise ClaimError(f"this server enrolls nodes into fleet {self.fleet}, not {body['fleet']}", 404)

    def answer(self, data: bytes, valid_days: float = CERT_DAYS) -> dict:
        """The answer to a claim: {"certificate", "fleet", "device"} and, with a broker, "broker" (its URL with
        this node's credentials); ClaimError with the HTTP status otherwise."""
        body = parse_claim(data)
        self._check_fleet(body)
        with self._update() as registry:
            entry = registry["tokens"].get(body["token_id"])
            expected = entry and proof(entry["hash"].encode(), body["fleet"], body["node"])
            if not entry or not hmac.compare_digest(expected, body["proof"]):
                raise ClaimError("unknown or wrong claim token", 403)
            if entry.get("revoked"):
                raise ClaimError("this claim token has been revoked by the fleet's owner", 403)
            if entry["node"] not in (None, body["node"]):
                raise ClaimError(f"this claim token was already used by node {entry['node']}", 409)
            if entry["node"] is None and entry.get("expires") and entry["expires"] < time.time():
                raise ClaimError("this claim token's window has closed (the fleet's owner makes a new seed)", 403)
            _not_revoked(self.fleet, body["node"])
            cert = self.issuer.certify(body["node"], valid_days)
            entry.update(node=body["node"], serial=serial(cert), claimed=entry.get("claimed") or int(time.time()))
            if self.broker is not None:   # the broker admits it before the claim is saved: at worst one extra
                self.broker.sync(_enrolled(registry, self.fleet))
            return self._answer(cert, entry)

    def renew(self, data: bytes, valid_days: float = CERT_DAYS) -> dict:
        """The answer to a renewal: a new certificate for a node enrolled here and not revoked."""
        body = parse_renewal(data)
        self._check_fleet(body)
        try:
            cert = base64.b64decode(body["certificate"], validate=True)
            read_certificate(cert, public_key_of(self.fleet), body["node"], expired_ok=True)
        except ValueError:
            raise ClaimError("the renewal's certificate is not base64") from None
        except CertificateError as exc:
            raise ClaimError(f"the renewal's certificate is refused: {exc}", 403) from None
        with self._update() as registry:
            entry = next((e for e in registry["tokens"].values() if e["node"] == body["node"]), None)
            if entry is None:
                raise ClaimError("this node was not enrolled by this server", 403)
            if entry.get("revoked"):
                raise ClaimError("this node's claim has been revoked by the fleet's owner", 403)
            _not_revoked(self.fleet, body["node"])
            new = self.issuer.certify(body["node"], valid_days)
            entry.update(serial=serial(new), renewed=int(time.time()))
            return self._answer(new, entry)

    def _answer(self, cert: bytes, entry: dict) -> dict:
        out = {"certificate": base64.b64encode(cert).decode(), "fleet": self.fleet, "device": entry["device"]}
        if self.broker is not None:
            out["broker"] = self.broker.url(entry["node"])
        return out

    def write_broker_passwords(self) -> int:
        """The broker's password file for the nodes enrolled and not revoked now (at the server's start, and
        whenever the claims file or the revocation list changes), the broker told when it changed; how many it
        lists."""
        with self._update() as registry:
            nodes = _enrolled(registry, self.fleet)
            self.broker.sync(nodes)
            return len(set(nodes))


def _enrolled(registry: dict, fleet: str) -> list[str]:
    """The nodes the broker admits: enrolled, their claim not revoked, not on the fleet's revocation list."""
    held = REVOKED.get(public_key_of(fleet))
    return [e["node"] for e in registry["tokens"].values() if e["node"] and not e.get("revoked")
            and (held is None or check_node_id(e["node"]) not in held.keys)]


def _not_revoked(fleet: str, node: str) -> None:
    held = REVOKED.get(public_key_of(fleet))
    if held is not None and check_node_id(node) in held.keys:     # node: checked by parse_claim/renewal
        raise ClaimError(f"node {node} is on the fleet's revocation list ({held.seq})", 403)

