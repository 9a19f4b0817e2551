"""Fleet certificates: a fleet key certifies its nodes; a node in fleet mode admits only certified peers.

The fleet key stays offline. It signs three things:

    direct certificate   DAG-CBOR {"fleet": fleet public key, "node": node id, "expires": unix s (0 = never),
                         "sig": fleet sig of the map without "sig"} (`hearth fleet sign`; the first format, kept)
    delegation           {"use": "enroll", "fleet": fleet public key, "key": enrollment public key,
                         "expires": unix s (never 0), "sig": fleet sig of "hearth-delegation\\0" + the map
                         without "sig"} (`hearth fleet delegate`): the enrollment key may certify nodes until then
    revocation list      (`hearth fleet revoke`; its format and files: edge/fleet/revocations.py)

The enrollment server holds only the enrollment key and its delegation, and issues short-lived certificates:

    delegated certificate  {"fleet", "node", "issued", "expires" (never 0, never after the delegation's),
                           "by": the delegation's exact bytes, "sig": the enrollment key's sig of
                           "hearth-node-cert\\0" + the map without "sig"}

A certificate's serial is the first 16 bytes of its SHA-256 (hex): nothing to keep in step. Each signature has
its own prefix (the direct certificate's, older, has none and a different set of fields), so no signed thing can
pass for another.

Revocation: the newest list each fleet signed that this process has seen is kept here in REVOKED (keyed by fleet
key) and check_certificate, which the transport's admission calls both ways, refuses what it names. The process-wide
table is deliberate: a revocation is true for every node of the fleet, and a list only ever gives way to one
the same fleet signed with a higher sequence number.
"""

import hashlib
import threading
import time
from dataclasses import dataclass

from edge.errors import DecodeError, EdgeError
from edge.identity import Identity, check_node_id, node_id_of, public_key_of, verify
from edge.ipld import cbor

MAX_CERT = 1024
_DIRECT = {"fleet", "node", "expires", "sig"}
_DELEGATED = {"fleet", "node", "issued", "expires", "by", "sig"}


class CertificateError(EdgeError):
    """A fleet certificate is malformed, for another node or fleet, expired, revoked, or not signed by the
    fleet (directly, or by an enrollment key the fleet delegated to)."""


def serial(cert: bytes) -> str:
    return hashlib.sha256(cert).hexdigest()[:32]


def sign_certificate(fleet: Identity, node_id: str, valid_days: float = 0) -> bytes:
    public_key_of(node_id)   # a DecodeError for anything that is not a node id
    body = {"fleet": fleet.public_key, "node": node_id,
            "expires": int(time.time() + valid_days * 86400) if valid_days else 0}
    return cbor.dumps(body | {"sig": fleet.sign(cbor.dumps(body))})


def sign_delegation(fleet: Identity, enroll_id: str, valid_days: float) -> bytes:
    """The fleet key's permission for the enrollment key enroll_id to certify nodes for valid_days."""
    if not valid_days > 0:
        raise CertificateError("a delegation must expire: give it a number of days (e.g. 365)")
    body = {"use": "enroll", "fleet": fleet.public_key, "key": public_key_of(enroll_id),
            "expires": int(time.time() + valid_days * 86400)}
    return cbor.dumps(body | {"sig": fleet.sign(b"hearth-delegation\0" + cbor.dumps(body))})


def check_delegation(delegation: bytes, fleet_key: bytes, now: float | None = None) -> tuple[bytes, int]:
    """(enrollment public key, expiry) of a delegation fleet_key signed and that has not expired."""
    try:
        value = cbor.loads(delegation) if isinstance(delegation, (bytes, bytearray)) else None
    except DecodeError as exc:
        raise CertificateError(f"the delegation is malformed: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"use", "fleet", "key", "expires", "sig"} \
            or value["use"] != "enroll" or not isinstance(value["key"], bytes) or len(value["key"]) != 32:
        raise CertificateError("the delegation does not have exactly use = enroll, fleet, key, expires and sig")
    if value["fleet"] != fleet_key:
        raise CertificateError("the delegation is from another fleet")
    expires = value["expires"]
    if not isinstance(expires, int) or expires <= (time.time() if now is None else now):
        raise CertificateError("the enrollment key's delegation has expired (the fleet's owner renews it with "
                               "`hearth fleet delegate`)")
    body = {k: value[k] for k in ("use", "fleet", "key", "expires")}
    if not isinstance(value["sig"], bytes) or \
            not verify(node_id_of(fleet_key), b"hearth-delegation\0" + cbor.dumps(body), value["sig"]):
        raise CertificateError("the delegation's signature is not the fleet key's")
    return value["key"], expires


def sign_delegated(enroll: Identity, delegation: bytes, node_id: str, valid_days: float,
                   now: float | None = None) -> bytes:
    """A certificate for node_id from the enrollment key, valid for valid_days (never past the delegation)."""
    public_key_of(node_id)
    value = cbor.loads(delegation)
    key, until = check_delegation(delegation, value["fleet"], now)
    if key != enroll.public_key:
        raise CertificateError("this delegation is for another enrollment key")
    if not valid_days > 0:
        raise CertificateError("an enrollment certificate must expire: give it a number of days")
    now = int(time.time() if now is None else now)
    body = {"fleet": value["fleet"], "node": node_id, "issued": now,
            "expires": min(until, int(now + valid_days * 86400)), "by": bytes(delegation)}
    return cbor.dumps(body | {"sig": enroll.sign(b"hearth-node-cert\0" + cbor.dumps(body))})


def _same_key(a, b) -> bool:
    """Whether two node ids name one CURVE key (an Ed25519 key and its negation do): the node a certificate
    admits is the key its connection proves, whichever of the key's two texts it goes by."""
    try:
        return isinstance(a, str) and check_node_id(a) == check_node_id(b)
    except DecodeError:
        return False


def _key_of(node_id) -> bytes | None:
    try:
        return check_node_id(node_id)
    except DecodeError:
        return None


def read_certificate(cert: bytes, fleet_key: bytes, node_id: str, now: float | None = None, *,
                     expired_ok: bool = False) -> dict:
    """The fields of a certificate that fleet_key (directly or through a delegation) signed for node_id, with
    its "serial"; CertificateError saying why not otherwise. expired_ok: an expired certificate is still read
    (the enrollment server renews a genuine one); a revoked one never."""
    if not cert:
        raise CertificateError("no certificate was presented (missing); the fleet's owner issues one with "
                               "`hearth fleet sign NODE_ID`")
    if not isinstance(cert, (bytes, bytearray)) or len(cert) > MAX_CERT:
        raise CertificateError(f"the certificate is larger than {MAX_CERT} bytes")
    now = time.time() if now is None else now
    try:
        value = cbor.loads(cert)
    except DecodeError as exc:
        raise CertificateError(f"the certificate is malformed: {exc}") from None
    if not isinstance(value, dict) or set(value) not in (_DIRECT, _DELEGATED):
        raise CertificateError("the certificate does not have exactly fleet, node, expires and sig (or, from an "
                               "enrollment server, also issued and by)")
    if value["fleet"] != fleet_key:
        raise CertificateError("the certificate is from another fleet")
    if value["node"] != node_id and not _same_key(value["node"], node_id):
        raise CertificateError(f"the certificate is for {value['node']!r}, not {node_id}")
    expires = value["expires"]
    delegated = set(value) == _DELEGATED
    if not isinstance(expires, int) or (delegated and not expires) or \
            (expires and expires < now and not expired_ok):
        raise CertificateError("the certificate has expired")
    if delegated:
        # the delegation is checked as of the certificate's own life: expired_ok reads an old certificate whose
        # delegation has since expired too (the server then refuses to renew it under a delegation it lacks)
        signer, _ = check_delegation(value["by"], fleet_key, min(now, expires - 1) if expired_ok else now)
        body = {k: value[k] for k in ("fleet", "node", "issued", "expires", "by")}
        signed, by = b"hearth-node-cert\0" + cbor.dumps(body), node_id_of(signer)
    else:
        body = {k: value[k] for k in ("fleet", "node", "expires")}
        signed, by = cbor.dumps(body), node_id_of(fleet_key)
    if not isinstance(value["sig"], bytes) or not verify(by, signed, value["sig"]):
        raise CertificateError("the certificate's signature is not the fleet key's" if not delegated else
                               "the certificate's signature is not its enrollment key's")
    number = serial(bytes(cert))
    revoked = REVOKED.get(bytes(fleet_key))
    if revoked is not None and (number in revoked.serials or _key_of(node_id) in revoked.keys):
        raise CertificateError(f"the certificate (serial {number}) has been revoked by the fleet "
                               f"(revocation list {revoked.seq})")
    return {"node": value["node"], "expires": expires, "issued": value.get("issued"), "serial": number,
            "delegated": delegated}


def check_certificate(cert: bytes, fleet_key: bytes, node_id: str, now: float | None = None) -> None:
    """Return if cert admits node_id into the fleet of fleet_key; CertificateError saying why not otherwise."""
    read_certificate(cert, fleet_key, node_id, now)


# the revocation table: what admission consults ----------------------------------------------------------------


@dataclass(frozen=True)
class Revocations:
    fleet: bytes
    seq: int
    nodes: tuple          # node ids as signed
    serials: frozenset    # certificate serials
    keys: frozenset       # the nodes' CURVE keys: what admission compares (every text of one key)
    raw: bytes


REVOKED: dict[bytes, Revocations] = {}
_revoked_lock = threading.Lock()


def honour(revocations: Revocations) -> bool:
    """Make revocations this process's list for its fleet unless a list with the same or a higher sequence
    number is already there; whether it was taken."""
    with _revoked_lock:
        held = REVOKED.get(revocations.fleet)
        if held is not None and held.seq >= revocations.seq:
            return False
        REVOKED[revocations.fleet] = revocations
        return True
