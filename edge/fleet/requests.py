"""The enrollment protocol's messages: claims and renewals, made by the device and checked by the server.

The enrollment server's requests, over TLS (edge/fleet/tls.py), one per connection:

    POST /claim    {"v": 1, "fleet": FLEET_ID, "node": NODE_ID, "token_id": hex, "proof": hex, "sig": base64}
    POST /renew    {"v": 1, "fleet": FLEET_ID, "node": NODE_ID, "certificate": base64, "sig": base64}
    GET /revoked   the newest revocation list the fleet key signed (raw DAG-CBOR; 404 when there is none)
    proof          HMAC-SHA256(token, "hearth-claim\\0" FLEET_ID "\\0" NODE_ID): the token never travels, and a
                   proof seen on the wire is worth nothing for any other node id
    sig            the node key's Ed25519 signature of the request without "sig" (a renewal's prefixed with
                   "hearth-renew\\0"): the claimant holds the node key
    answer         200 {"certificate": base64, "fleet": FLEET_ID, "device": NAME}; 4xx {"error": "what is wrong"}
"""

import base64
import hashlib
import hmac
import json
import secrets

from edge.errors import EdgeError
from edge.fleet.certificates import CertificateError, read_certificate
from edge.identity import Identity, check_node_id, public_key_of, verify
from edge.logsafe import printable

MAX_REQUEST = 4096                 # bytes of a request body
CERT_DAYS = 30                     # what a certificate from the enrollment server is valid for by default


class ClaimError(EdgeError):
    """A claim that cannot be made or was refused; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_id(token: str) -> str:
    return hashlib.sha256(b"hearth-claim-id\0" + token.encode()).hexdigest()[:32]


def token_hash(token: str) -> str:
    return hashlib.sha256(b"hearth-claim-token\0" + token.encode()).hexdigest()


def proof(token_secret: bytes, fleet: str, node: str) -> str:
    return hmac.new(token_secret, b"hearth-claim\0" + fleet.encode() + b"\0" + node.encode(),
                    hashlib.sha256).hexdigest()


def _canonical(body: dict) -> bytes:
    return json.dumps({k: v for k, v in body.items() if k != "sig"}, sort_keys=True, separators=(",", ":")).encode()


def claim_request(identity: Identity, token: str, fleet: str) -> bytes:
    """The device's claim (JSON bytes)."""
    public_key_of(fleet)
    body = {"v": 1, "fleet": fleet, "node": identity.node_id, "token_id": token_id(token),
            "proof": proof(token_hash(token).encode(), fleet, identity.node_id)}
    body["sig"] = base64.b64encode(identity.sign(_canonical(body))).decode()
    return json.dumps(body).encode()


def renewal_request(identity: Identity, cert: bytes, fleet: str) -> bytes:
    """The node's renewal (JSON bytes): its current certificate, signed with its node key."""
    public_key_of(fleet)
    body = {"v": 1, "fleet": fleet, "node": identity.node_id, "certificate": base64.b64encode(cert).decode()}
    body["sig"] = base64.b64encode(identity.sign(b"hearth-renew\0" + _canonical(body))).decode()
    return json.dumps(body).encode()


def _parse(data: bytes, want: set, prefix: bytes) -> dict:
    if len(data) > MAX_REQUEST:
        raise ClaimError(f"a request is at most {MAX_REQUEST} bytes", 413)
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ClaimError("the request is not JSON") from None
    if not isinstance(body, dict) or set(body) != want or not all(isinstance(body[k], str) for k in want - {"v"}):
        raise ClaimError(f"a request has exactly the string fields {', '.join(sorted(want - {'v'}))} and v")
    if body["v"] != 1:
        raise ClaimError(f"request version {printable(repr(body['v']))[:40]} is not one this server speaks (1)")
    try:
        check_node_id(body["node"])      # canonical, a valid point: one text per node in the claims file
        sig = base64.b64decode(body["sig"], validate=True)
    except (EdgeError, ValueError):
        raise ClaimError("the request's node id or signature is malformed") from None
    if not verify(body["node"], prefix + _canonical(body), sig):
        raise ClaimError("the request is not signed by the node it names", 403)
    return body


def parse_claim(data: bytes) -> dict:
    """A claim's fields, checked for shape and the node's signature; ClaimError(400/403/413) otherwise."""
    return _parse(data, {"v", "fleet", "node", "token_id", "proof", "sig"}, b"")


def parse_renewal(data: bytes) -> dict:
    return _parse(data, {"v", "fleet", "node", "certificate", "sig"}, b"hearth-renew\0")



def accept_certificate(answer: dict, identity: Identity, fleet: str) -> bytes:
    """The certificate from an enrollment answer, checked: from the expected fleet, for this node."""
    try:
        cert = base64.b64decode(answer["certificate"], validate=True)
        read_certificate(cert, public_key_of(fleet), identity.node_id)
    except (KeyError, TypeError, ValueError, CertificateError) as exc:
        raise ClaimError(f"the enrollment server's answer holds no valid certificate for this node: {exc}") from None
    return cert

