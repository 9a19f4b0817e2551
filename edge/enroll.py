"""Claim tokens: how a device whose identity is born on the device gets its fleet certificate.

A fleet's owner cannot put a certificate in a seed: the certificate names the node id, and the node id only
exists once the device has made its key at first boot. So `hearth fleet provision --claim-url URL` gives each
device's seed a one-time claim token instead (with the enrollment URL and the fleet id), and keeps only the
tokens' SHA-256 in a claims file. At first boot the device moves the claim from the boot partition to its data
partition (root's only); hearth-enroll.service then POSTs a claim to `hearth fleet enroll-server` and gets
back a certificate for its own node id.

    request   {"v": 1, "fleet": FLEET_ID, "node": NODE_ID, "token_id": hex, "proof": hex, "sig": base64}
    proof     HMAC-SHA256(token, "hearth-claim\\0" FLEET_ID "\\0" NODE_ID): the token never travels, and a proof
              seen on the wire is worth nothing for any other node id
    sig       the node key's Ed25519 signature of the request without "sig": the claimant holds the node key
    answer    200 {"certificate": base64, "fleet": FLEET_ID}; 4xx {"error": "what is wrong"}

A token is bound to the first node id that claims it. The same node claiming again (a power cut before it saved
the answer) gets the same certificate; any other node is refused. The wire formats are pure functions; the
claims file is written atomically.

On the device (`claim_certificate`, run as root by hearth-enroll.service): the certificate is written to
fleet.cert and hearth.toml gets admission, fleet_key and fleet_cert (parsed and written whole, so a claim
made again after a power cut leaves each key once); only then is claim.json removed. Nothing in the service
user's data directory is read or written through a link.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading

from edge.atomic import open_dir, read_regular, update_toml, write_atomic
from edge.config import CONFIG_NAME
from edge.errors import EdgeError
from edge.identity import KEY_FILE, Identity, IdentityError, public_key_of, verify

CLAIM_FILE = "claim.json"          # in the device's data directory, 0600, until the certificate is saved
MAX_REQUEST = 4096


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


def _proof(token_secret: bytes, fleet: str, node: str) -> str:
    return hmac.new(token_secret, b"hearth-claim\0" + fleet.encode() + b"\0" + node.encode(),
                    hashlib.sha256).hexdigest()


def _canonical(body: dict) -> bytes:
    return json.dumps({k: v for k, v in body.items() if k != "sig"}, sort_keys=True, separators=(",", ":")).encode()


def claim_request(identity: Identity, token: str, fleet: str) -> bytes:
    """The device's claim (JSON bytes)."""
    public_key_of(fleet)
    body = {"v": 1, "fleet": fleet, "node": identity.node_id, "token_id": token_id(token),
            "proof": _proof(token_hash(token).encode(), fleet, identity.node_id)}
    body["sig"] = base64.b64encode(identity.sign(_canonical(body))).decode()
    return json.dumps(body).encode()


def parse_claim(data: bytes) -> dict:
    """A claim's fields, checked for shape and the node's signature; ClaimError(400/403) otherwise."""
    if len(data) > MAX_REQUEST:
        raise ClaimError(f"a claim is at most {MAX_REQUEST} bytes", 413)
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ClaimError("the claim is not JSON") from None
    want = {"v", "fleet", "node", "token_id", "proof", "sig"}
    if not isinstance(body, dict) or set(body) != want or not all(isinstance(body[k], str) for k in want - {"v"}):
        raise ClaimError(f"a claim has exactly the string fields {', '.join(sorted(want - {'v'}))} and v")
    if body["v"] != 1:
        raise ClaimError(f"claim version {body['v']!r} is not one this server speaks (1)")
    try:
        public_key_of(body["node"])
        sig = base64.b64decode(body["sig"], validate=True)
    except (EdgeError, ValueError):
        raise ClaimError("the claim's node id or signature is malformed") from None
    if not verify(body["node"], _canonical(body), sig):
        raise ClaimError("the claim is not signed by the node it names", 403)
    return body


class Claims:
    """The fleet side: the claims file ({"fleet", "tokens": {token_id: {"hash", "device", "node",
    "certificate"}}}), and the answers to claims."""

    def __init__(self, path: str, fleet: Identity):
        self.path = path
        self.fleet = fleet
        self._lock = threading.Lock()
        with open(path) as f:
            self.data = json.load(f)
        if self.data.get("fleet") != fleet.node_id:
            raise ClaimError(f"{path} holds claims of fleet {self.data.get('fleet')}, not of this key "
                             f"({fleet.node_id})")

    @staticmethod
    def create(path: str, fleet: Identity, devices: dict[str, str]) -> None:
        """Write a new claims file for {device name: token} (only the tokens' hashes are kept)."""
        tokens = {token_id(t): {"hash": token_hash(t), "device": name, "node": None, "certificate": None}
                  for name, t in devices.items()}
        _atomic_json(path, {"fleet": fleet.node_id, "tokens": tokens})

    def answer(self, data: bytes, valid_days: float = 0) -> dict:
        """The answer to a claim: {"certificate", "fleet"}; ClaimError with the HTTP status otherwise."""
        from edge.fleet import sign_certificate
        body = parse_claim(data)
        if body["fleet"] != self.fleet.node_id:
            raise ClaimError(f"this server enrolls nodes into fleet {self.fleet.node_id}, not {body['fleet']}", 404)
        with self._lock:
            entry = self.data["tokens"].get(body["token_id"])
            expected = entry and _proof(entry["hash"].encode(), body["fleet"], body["node"])
            if not entry or not hmac.compare_digest(expected, body["proof"]):
                raise ClaimError("unknown or wrong claim token", 403)
            if entry["node"] not in (None, body["node"]):
                raise ClaimError(f"this claim token was already used by node {entry['node']}", 409)
            if entry["certificate"] is None:
                cert = sign_certificate(self.fleet, body["node"], valid_days)
                entry["node"], entry["certificate"] = body["node"], base64.b64encode(cert).decode()
                _atomic_json(self.path, self.data)
            return {"certificate": entry["certificate"], "fleet": self.fleet.node_id, "device": entry["device"]}


def _atomic_json(path: str, value, dir_fd: int | None = None) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode(), 0o600, dir_fd=dir_fd)


def save_claim(data_dir: str, token: str, url: str, fleet: str, *, dir_fd: int | None = None) -> str:
    """At first boot: keep the seed's claim on the data partition, root's only (dir_fd: the data directory,
    opened by the caller, so that no link planted there is followed)."""
    path = os.path.join(data_dir, CLAIM_FILE)
    _atomic_json(CLAIM_FILE if dir_fd is not None else path, {"token": token, "url": url, "fleet": fleet}, dir_fd)
    return path


def accept_certificate(answer: dict, identity: Identity, fleet: str) -> bytes:
    """The certificate from an enrollment answer, checked: from the expected fleet, for this node."""
    from edge.fleet import CertificateError, check_certificate
    try:
        cert = base64.b64decode(answer["certificate"], validate=True)
        check_certificate(cert, public_key_of(fleet), identity.node_id)
    except (KeyError, TypeError, ValueError, CertificateError) as exc:
        raise ClaimError(f"the enrollment server's answer holds no valid certificate for this node: {exc}") from None
    return cert


# Root (first boot, enrollment) reads and writes the node key in the service user's directory: through a
# descriptor of it, following no link. The file's format is the one Identity.save writes and Identity.load reads:
# the key's 32-byte seed in hex.

def load_identity(data: int, where: str) -> Identity | None:
    """The node key in the data directory `data` (a descriptor), or None if there is none."""
    text = read_regular(KEY_FILE, data)
    if text is None:
        return None
    try:
        return Identity.from_seed(bytes.fromhex(text.decode().strip()))
    except (ValueError, UnicodeDecodeError):
        raise IdentityError(f"{where} holds no node key; move it away to make a new identity") from None


def save_identity(data: int, identity: Identity) -> None:
    write_atomic(KEY_FILE, (bytes(identity.signing_key).hex() + "\n").encode(), 0o600, dir_fd=data)


def claim_certificate(data_dir: str, timeout: float = 20) -> tuple[str, str] | None:
    """Make this node's claim (claim.json) at the enrollment server and keep the certificate it answers with;
    returns (fleet id, node id), or None when there is no claim to make. ClaimError saying why otherwise (the
    claim is kept, and hearth-enroll.service tries again)."""
    import urllib.error
    import urllib.request
    data = open_dir(data_dir)
    try:
        raw = read_regular(CLAIM_FILE, data)
        if raw is None:
            return None
        try:
            claim = json.loads(raw)
            url, token, fleet = claim["url"], claim["token"], claim["fleet"]
        except (ValueError, KeyError, TypeError):
            raise ClaimError(f"{os.path.join(data_dir, CLAIM_FILE)} is not a claim (token, url, fleet); "
                             "write the device's seed again") from None
        identity = load_identity(data, os.path.join(data_dir, KEY_FILE))
        if identity is None:
            raise ClaimError(f"no node key in {data_dir}: first boot (hearth provision first-boot) makes it")
        req = urllib.request.Request(url, data=claim_request(identity, token, fleet),
                                     headers={"content-type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                answer = json.loads(r.read(65536))
        except urllib.error.HTTPError as exc:
            try:
                why = json.loads(exc.read(4096)).get("error", "")
            except (ValueError, AttributeError):
                why = ""
            raise ClaimError(f"the enrollment server refused the claim ({exc.code}): {why or exc.reason}",
                             exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ClaimError(f"could not reach the enrollment server at {url}: {exc}; "
                             "hearth-enroll.service tries again", 503) from None
        if not isinstance(answer, dict):
            raise ClaimError("the enrollment server's answer holds no valid certificate for this node", 502)
        cert = accept_certificate(answer, identity, fleet)
        # root enrolls in the service user's directory: what it writes there stays the service user's
        st = os.fstat(data)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        write_atomic("fleet.cert", cert, dir_fd=data, owner=owner)
        update_toml(CONFIG_NAME, {"admission": "fleet", "fleet_key": fleet, "fleet_cert": "fleet.cert"},
                    dir_fd=data, comment="from the fleet enrollment", owner=owner)
        os.unlink(CLAIM_FILE, dir_fd=data)        # the token has done its work
        os.fsync(data)
        return fleet, identity.node_id
    finally:
        os.close(data)
