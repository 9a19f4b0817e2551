"""The device's enrollment claim (`hearth fleet claim`, run as root by hearth-enroll.service).

A fleet's owner cannot put a certificate in a seed: the certificate names the node id, and the node id only
exists once the device has made its key at first boot. So `hearth fleet provision --claim-url URL --pin FP`
gives each device's seed a one-time claim token (with the enrollment URL, the server's TLS fingerprint and the
fleet id), and keeps only the tokens' SHA-256 in a claims file. At first boot the device moves the claim from
the boot partition to its data partition (root's only); hearth-enroll.service then POSTs a claim to
`hearth fleet enroll-server` over TLS (the server's certificate must be the one pinned in the seed) and gets
back a short-lived certificate for its own node id, which the agent renews before it expires
(edge/fleet/renewal.py). The protocol: edge/fleet/requests.py.

The certificate is written to fleet.cert, the server's address and pin to enroll.json (for renewals), and
hearth.toml gets admission, fleet_key and fleet_cert (parsed and written whole, so a claim made again after a
power cut leaves each key once); only then is claim.json removed. Nothing in the service user's data directory
is read or written through a link.
"""

import json
import os

from edge.atomic import open_dir, read_regular, update_toml, write_atomic, write_json
from edge.config import CONFIG_NAME
from edge.fleet.renewal import ENROLL_FILE
from edge.fleet.requests import ClaimError, accept_certificate, claim_request
from edge.fleet.tls import normalize_pin, post
from edge.identity import KEY_FILE
from edge.provisioning.device.nodekey import load_identity

CLAIM_FILE = "claim.json"          # in the device's data directory, 0600, until the certificate is saved


def save_claim(data_dir: str, token: str, url: str, fleet: str, pin: str = "", *, dir_fd: int | None = None) -> str:
    """At first boot: keep the seed's claim on the data partition, root's only (dir_fd: the data directory,
    opened by the caller, so that no link planted there is followed)."""
    path = os.path.join(data_dir, CLAIM_FILE)
    write_json(CLAIM_FILE if dir_fd is not None else path,
               {"token": token, "url": url, "fleet": fleet, "pin": pin}, dir_fd)
    return path


def claim_certificate(data_dir: str, timeout: float = 20) -> tuple[str, str] | None:
    """Make this node's claim (claim.json) at the enrollment server and keep the certificate it answers with;
    returns (fleet id, node id), or None when there is no claim to make. ClaimError saying why otherwise (the
    claim is kept, and hearth-enroll.service tries again)."""
    data = open_dir(data_dir)
    try:
        raw = read_regular(CLAIM_FILE, data)
        if raw is None:
            return None
        try:
            claim = json.loads(raw)
            url, token, fleet, pin = claim["url"], claim["token"], claim["fleet"], normalize_pin(claim["pin"])
        except (ValueError, KeyError, TypeError, ClaimError):
            raise ClaimError(f"{os.path.join(data_dir, CLAIM_FILE)} is not a claim (token, url, fleet, pin); "
                             "write the device's seed again (`hearth fleet provision --pin`)") from None
        identity = load_identity(data, os.path.join(data_dir, KEY_FILE))
        if identity is None:
            raise ClaimError(f"no node key in {data_dir}: first boot (hearth provision first-boot) makes it")
        try:
            answer = post(url, pin, claim_request(identity, token, fleet), timeout)
        except ClaimError as exc:
            if exc.status == 503:
                raise ClaimError(f"{exc}; hearth-enroll.service tries again", 503) from None
            raise ClaimError(str(exc).replace("refused (", "refused the claim (", 1), exc.status) from None
        cert = accept_certificate(answer, identity, fleet)
        # root enrolls in the service user's directory: what it writes there stays the service user's
        st = os.fstat(data)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        write_atomic("fleet.cert", cert, dir_fd=data, owner=owner)
        write_json(ENROLL_FILE, {"url": url, "pin": pin, "fleet": fleet}, data, owner)
        update_toml(CONFIG_NAME, {"admission": "fleet", "fleet_key": fleet, "fleet_cert": "fleet.cert"},
                    dir_fd=data, comment="from the fleet enrollment", owner=owner)
        os.unlink(CLAIM_FILE, dir_fd=data)        # the token has done its work
        os.fsync(data)
        return fleet, identity.node_id
    finally:
        os.close(data)
