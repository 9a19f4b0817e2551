"""Fleets: a fleet key signs certificates for its nodes; a node in fleet mode admits only certified peers.

A certificate is DAG-CBOR {"fleet": fleet public key, "node": node id, "expires": unix seconds (0 = never),
"sig": the fleet key's Ed25519 signature of the same map without "sig"}.
"""

import time

from edge.errors import DecodeError, EdgeError
from edge.identity import Identity, check_node_id, node_id_of, public_key_of, verify
from edge.store import cbor

MAX_CERT = 1024


class CertificateError(EdgeError):
    """A fleet certificate is malformed, for another node or fleet, expired, or not signed by the fleet."""


def sign_certificate(fleet: Identity, node_id: str, valid_days: float = 0) -> bytes:
    public_key_of(node_id)   # a DecodeError for anything that is not a node id
    body = {"fleet": fleet.public_key, "node": node_id,
            "expires": int(time.time() + valid_days * 86400) if valid_days else 0}
    return cbor.dumps(body | {"sig": fleet.sign(cbor.dumps(body))})


def _same_key(a, b) -> bool:
    """Whether two node ids name one CURVE key (an Ed25519 key and its negation do): the node a certificate
    admits is the key its connection proves, whichever of the key's two texts it goes by."""
    try:
        return isinstance(a, str) and check_node_id(a) == check_node_id(b)
    except DecodeError:
        return False


def check_certificate(cert: bytes, fleet_key: bytes, node_id: str, now: float | None = None) -> None:
    """Return if cert admits node_id into the fleet of fleet_key; CertificateError saying why not otherwise."""
    if not cert:
        raise CertificateError("no certificate was presented (missing); the fleet's owner issues one with "
                               "`hearth fleet sign NODE_ID`")
    if not isinstance(cert, (bytes, bytearray)) or len(cert) > MAX_CERT:
        raise CertificateError(f"the certificate is larger than {MAX_CERT} bytes")
    try:
        value = cbor.loads(cert)
    except DecodeError as exc:
        raise CertificateError(f"the certificate is malformed: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"fleet", "node", "expires", "sig"}:
        raise CertificateError("the certificate does not have exactly fleet, node, expires and sig")
    if value["fleet"] != fleet_key:
        raise CertificateError("the certificate is from another fleet")
    if value["node"] != node_id and not _same_key(value["node"], node_id):
        raise CertificateError(f"the certificate is for {value['node']!r}, not {node_id}")
    expires = value["expires"]
    if not isinstance(expires, int) or expires and expires < (time.time() if now is None else now):
        raise CertificateError("the certificate has expired")
    body = {k: value[k] for k in ("fleet", "node", "expires")}
    if not isinstance(value["sig"], bytes) or not verify(node_id_of(fleet_key), cbor.dumps(body), value["sig"]):
        raise CertificateError("the certificate's signature is not the fleet key's")
