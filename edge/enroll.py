"""Enrollment: how a device whose identity is born on the device gets, keeps and loses its fleet certificate.

A fleet's owner cannot put a certificate in a seed: the certificate names the node id, and the node id only
exists once the device has made its key at first boot. So `hearth fleet provision --claim-url URL --pin FP`
gives each device's seed a one-time claim token (with the enrollment URL, the server's TLS fingerprint and the
fleet id), and keeps only the tokens' SHA-256 in a claims file. At first boot the device moves the claim from
the boot partition to its data partition (root's only); hearth-enroll.service then POSTs a claim to
`hearth fleet enroll-server` over TLS (the server's certificate must be the one pinned in the seed) and gets
back a short-lived certificate for its own node id. The agent renews it before it expires (serve_renewal).

The enrollment server holds no fleet key: an enrollment key and the fleet key's delegation to it
(`hearth fleet delegate`, edge/fleet.py). Its requests, over TLS, one per connection:

    POST /claim    {"v": 1, "fleet": FLEET_ID, "node": NODE_ID, "token_id": hex, "proof": hex, "sig": base64}
    POST /renew    {"v": 1, "fleet": FLEET_ID, "node": NODE_ID, "certificate": base64, "sig": base64}
    GET /revoked   the newest revocation list the fleet key signed (raw DAG-CBOR; 404 when there is none)
    proof          HMAC-SHA256(token, "hearth-claim\\0" FLEET_ID "\\0" NODE_ID): the token never travels, and a
                   proof seen on the wire is worth nothing for any other node id
    sig            the node key's Ed25519 signature of the request without "sig" (a renewal's prefixed with
                   "hearth-renew\\0"): the claimant holds the node key
    answer         200 {"certificate": base64, "fleet": FLEET_ID, "device": NAME}; 4xx {"error": "what is wrong"}

A token is bound to the first node id that claims it, within its claim window (`--claim-days`). The same node
claiming again (a power cut before it saved the answer) gets a certificate again; any other node is refused,
and the operator sees which node holds each token and can revoke it (`hearth fleet claims`). A renewal is
answered for a node that holds a token that is not revoked, presenting a certificate of this fleet for itself
(expired is fine: a box that was off for a month comes back), not on the fleet's revocation list. What
remains: a seed read before the device's first boot is still a secret: whoever claims first with it wins (the
real device then gets a 409, and the operator revokes that token and the stranger's node).

On the device (`claim_certificate`, run as root by hearth-enroll.service): the certificate is written to
fleet.cert, the server's address and pin to enroll.json (for renewals), and hearth.toml gets admission,
fleet_key and fleet_cert (parsed and written whole, so a claim made again after a power cut leaves each key
once); only then is claim.json removed. Nothing in the service user's data directory is read or written
through a link.
"""

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import ssl
import threading
import time

from edge.atomic import open_dir, read_regular, update_toml, write_atomic
from edge.config import CONFIG_NAME
from edge.errors import EdgeError
from edge.fleet import (REVOKED, REVOKED_FILE, CertificateError, check_delegation, honour, parse_revocations,
                        read_certificate, serial, sign_delegated)
from edge.identity import KEY_FILE, Identity, IdentityError, check_node_id, public_key_of, verify
from edge.logsafe import printable
from edge.service import Handle

log = logging.getLogger(__name__)

CLAIM_FILE = "claim.json"          # in the device's data directory, 0600, until the certificate is saved
ENROLL_FILE = "enroll.json"        # the enrollment server's URL and pin, kept for renewals
MAX_REQUEST = 4096                 # bytes of a request body
MAX_HEAD = 8192                    # bytes of a request head
MAX_CONNECTIONS = 32               # connections at once; more are closed at once
REQUEST_TIMEOUT = 15.0             # seconds a connection may take: TLS handshake, request, answer
CERT_DAYS = 30                     # what a certificate from the enrollment server is valid for by default
RENEW_AT = 2 / 3                   # of a certificate's life: when the node renews it
RETRY_FIRST, RETRY_MAX = 60.0, 6 * 3600.0    # a failed renewal is retried after this, doubling up to that
REVOCATIONS_EVERY = 3600.0         # seconds between fetches of the revocation list


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

    def __init__(self, path: str, issuer: Issuer | None = None, fleet: str | None = None):
        self.path = path
        self.issuer = issuer
        self.fleet = issuer.fleet if issuer else fleet
        self._lock = threading.Lock()
        data = self._read()
        if data.get("fleet") != self.fleet:
            raise ClaimError(f"{path} holds claims of fleet {data.get('fleet')}, not of this fleet ({self.fleet})")

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
                _atomic_json(self.path, data)

    @staticmethod
    def create(path: str, fleet: str, devices: dict[str, str], window_days: float = 0) -> None:
        """Write a new claims file for {device name: token} (only the tokens' hashes are kept); each token can
        be claimed for window_days (0: for ever)."""
        public_key_of(fleet)
        until = int(time.time() + window_days * 86400) if window_days else 0
        tokens = {token_id(t): {"hash": token_hash(t), "device": name, "expires": until, "node": None,
                                "serial": None, "claimed": None, "revoked": False}
                  for name, t in devices.items()}
        _atomic_json(path, {"fleet": fleet, "tokens": tokens})

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
        """The answer to a claim: {"certificate", "fleet", "device"}; ClaimError with the HTTP status otherwise."""
        body = parse_claim(data)
        self._check_fleet(body)
        with self._update() as registry:
            entry = registry["tokens"].get(body["token_id"])
            expected = entry and _proof(entry["hash"].encode(), body["fleet"], body["node"])
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
            return {"certificate": base64.b64encode(cert).decode(), "fleet": self.fleet, "device": entry["device"]}

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
            return {"certificate": base64.b64encode(new).decode(), "fleet": self.fleet, "device": entry["device"]}


def _not_revoked(fleet: str, node: str) -> None:
    held = REVOKED.get(public_key_of(fleet))
    if held is not None and check_node_id(node) in held.keys:     # node: checked by parse_claim/renewal
        raise ClaimError(f"node {node} is on the fleet's revocation list ({held.seq})", 403)


def _atomic_json(path: str, value, dir_fd: int | None = None, owner=None) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode(), 0o600, dir_fd=dir_fd, owner=owner)


def save_claim(data_dir: str, token: str, url: str, fleet: str, pin: str = "", *, dir_fd: int | None = None) -> str:
    """At first boot: keep the seed's claim on the data partition, root's only (dir_fd: the data directory,
    opened by the caller, so that no link planted there is followed)."""
    path = os.path.join(data_dir, CLAIM_FILE)
    _atomic_json(CLAIM_FILE if dir_fd is not None else path,
                 {"token": token, "url": url, "fleet": fleet, "pin": pin}, dir_fd)
    return path


def accept_certificate(answer: dict, identity: Identity, fleet: str) -> bytes:
    """The certificate from an enrollment answer, checked: from the expected fleet, for this node."""
    try:
        cert = base64.b64decode(answer["certificate"], validate=True)
        read_certificate(cert, public_key_of(fleet), identity.node_id)
    except (KeyError, TypeError, ValueError, CertificateError) as exc:
        raise ClaimError(f"the enrollment server's answer holds no valid certificate for this node: {exc}") from None
    return cert


# TLS ----------------------------------------------------------------------------------------------------------


def normalize_pin(pin: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (colons and a sha256: prefix are accepted)."""
    text = pin.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ClaimError(f"{pin!r} is not a SHA-256 fingerprint (64 hex digits, as `hearth fleet enroll-server` "
                         "prints it)")
    return text


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def make_tls(cert_path: str, key_path: str, host: str) -> str:
    """A self-signed P-256 certificate for the enrollment server (10 years; its pin in every seed is what
    devices trust, not a CA); returns its fingerprint."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hearth enrollment")])
    try:
        alt = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host or "localhost")
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .sign(key, hashes.SHA256()))
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def tls_fingerprint(cert_path: str) -> str:
    with open(cert_path) as f:
        return fingerprint(ssl.PEM_cert_to_DER_cert(f.read()))


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def pinned_request(url: str, pin: str, body: bytes | None = None, timeout: float = 20,
                   limit: int = 65536) -> tuple[int, bytes]:
    """POST body (or GET) to an https URL whose server certificate has the SHA-256 fingerprint pin: the
    connection is refused before anything is sent when it does not. (status, at most limit bytes of body);
    ClaimError(503) when the server cannot be reached, ClaimError(495) on the wrong certificate."""
    import http.client
    import urllib.parse
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise ClaimError(f"{url!r} is not a URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ClaimError(f"{url}: the enrollment server is reached over https:// only")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False            # the pin names the one certificate trusted, whatever the host name
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(parts.hostname, port, timeout=timeout, context=ctx)
    try:
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as exc:
            raise ClaimError(f"could not reach the enrollment server at {url}: {exc}", 503) from None
        got = fingerprint(conn.sock.getpeercert(binary_form=True) or b"")
        if not hmac.compare_digest(got, pin):
            raise ClaimError(f"the enrollment server at {url} has TLS certificate {got[:16]}…, not the one "
                             f"pinned in the seed ({pin[:16]}…): refused (another server, or a man in the middle)",
                             495)
        try:
            conn.request("POST" if body is not None else "GET", parts.path or "/", body=body,
                         headers={"content-type": "application/json"} if body is not None else {})
            resp = conn.getresponse()
            data = resp.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise ClaimError(f"the enrollment server at {url} did not answer: {exc}", 503) from None
        if len(data) > limit:
            raise ClaimError(f"the enrollment server's answer is over {limit} bytes", 502)
        return resp.status, data
    finally:
        conn.close()


def _post(url: str, pin: str, body: bytes, timeout: float) -> dict:
    status, data = pinned_request(url, pin, body, timeout)
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        answer = None
    if status != 200:
        why = answer.get("error", "") if isinstance(answer, dict) else ""
        raise ClaimError(f"the enrollment server refused ({status}): {printable(str(why))[:300]}", status)
    if not isinstance(answer, dict):
        raise ClaimError("the enrollment server's answer holds no valid certificate for this node", 502)
    return answer


def _sibling(url: str, path: str) -> str:
    """The server's other request: https://host:port/claim -> https://host:port/renew."""
    base = url[:-len("/claim")] if url.endswith("/claim") else url.rstrip("/")
    return base + path


# the server ---------------------------------------------------------------------------------------------------


async def serve_enrollment(claims: Claims, ctx: ssl.SSLContext, host: str, port: int, *, days: float = CERT_DAYS,
                           revoked_path: str | None = None, say=print, task_status=None):
    """Serve claims, renewals and the revocation list over TLS on host:port until cancelled; reports the
    bound port. Each connection is one request, bounded in size and time; more than MAX_CONNECTIONS at once are
    closed as they come; a malformed request is a 400; nothing a client sends ends the server."""
    import http

    import h11
    import trio

    busy = [0]

    async def answer(target: bytes, method: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        """(status, content type, body) for one request: targets are compared as bytes, nothing parsed."""
        json_type = b"application/json"
        routes = {b"/claim": b"POST", b"/renew": b"POST", b"/revoked": b"GET"}
        if target not in routes:
            return 404, json_type, json.dumps({"error": "the enrollment server answers POST /claim, "
                                                        "POST /renew and GET /revoked"}).encode()
        if method != routes[target]:
            return 405, json_type, json.dumps({"error": f"use {routes[target].decode()}"}).encode()
        if target == b"/revoked":
            data = await trio.to_thread.run_sync(_read_revocations, revoked_path, claims.fleet)
            if data is None:
                return 404, json_type, b'{"error": "the fleet has revoked nothing"}'
            return 200, b"application/cbor", data
        work = claims.answer if target == b"/claim" else claims.renew
        try:
            result = await trio.to_thread.run_sync(work, body, days)
        except ClaimError as exc:   # its text may quote the client's: escaped for the log
            say(printable(f"{target.decode()[1:]} refused ({exc.status}): {exc}"), True)
            return exc.status, json_type, json.dumps({"error": str(exc)}).encode()
        except OSError as exc:      # the claims file could not be written: nothing was given out
            say(f"{target.decode()[1:]} failed: {exc}", True)
            return 500, json_type, b'{"error": "the enrollment server could not save its records; try later"}'
        node = json.loads(body)["node"]
        say(("enrolled" if target == b"/claim" else "renewed") + f" {result['device']} as {node}", False)
        return 200, json_type, json.dumps(result).encode()

    async def one(raw):
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        stream = trio.SSLStream(raw, ctx, server_side=True)
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await stream.do_handshake()
                head, body = None, bytearray()
                try:
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            data = await stream.receive_some(16384)
                            conn.receive_data(data)
                            if not data and head is None:
                                return
                        elif isinstance(event, h11.Request):
                            head = event
                        elif isinstance(event, h11.Data):
                            body += event.data
                            if len(body) > MAX_REQUEST:
                                raise h11.RemoteProtocolError(f"the body is over {MAX_REQUEST} bytes", 413)
                        elif isinstance(event, h11.EndOfMessage):
                            break
                        else:
                            return
                    status, ctype, out = await answer(head.target, head.method, bytes(body))
                except h11.RemoteProtocolError as exc:
                    status, ctype = exc.error_status_hint, b"application/json"
                    out = json.dumps({"error": f"bad request: {exc}"}).encode()
                if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                    return
                reason = http.HTTPStatus(status).phrase.encode() if status in http.HTTPStatus._value2member_map_ \
                    else b""
                await stream.send_all(conn.send(h11.Response(status_code=status, reason=reason, headers=[
                    (b"content-type", ctype), (b"content-length", str(len(out)).encode()),
                    (b"connection", b"close")])) + conn.send(h11.Data(data=out)) + conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, ssl.SSLError,
                h11.LocalProtocolError):
            pass
        except Exception as exc:  # noqa: BLE001 - one connection's failure (a bug) must not end the server
            log.warning("enrollment server: a request failed: %s", printable(repr(exc)))
        finally:
            with trio.move_on_after(1):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                    pass

    async def limited(raw):
        if busy[0] >= MAX_CONNECTIONS:
            await raw.aclose()            # over the limit: closed now, costing no descriptor while it waits
            return
        busy[0] += 1
        try:
            await one(raw)
        finally:
            busy[0] -= 1

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        if task_status is not None:
            task_status.started(bound)
        await trio.serve_listeners(limited, listeners, handler_nursery=nursery)


def _read_revocations(path: str | None, fleet: str) -> bytes | None:
    """The server's revocation list, read for each request (the operator replaces the file), checked, and
    honoured by the server itself (no renewal for what it names)."""
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = f.read(1 << 21)
    try:
        honour(parse_revocations(data, public_key_of(fleet)))
    except CertificateError as exc:
        log.warning("%s is not a revocation list of this fleet: %s", path, exc)
        return None
    return data


# the device -------------------------------------------------------------------------------------------------

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
            answer = _post(url, pin, claim_request(identity, token, fleet), timeout)
        except ClaimError as exc:
            if exc.status == 503:
                raise ClaimError(f"{exc}; hearth-enroll.service tries again", 503) from None
            raise ClaimError(str(exc).replace("refused (", "refused the claim (", 1), exc.status) from None
        cert = accept_certificate(answer, identity, fleet)
        # root enrolls in the service user's directory: what it writes there stays the service user's
        st = os.fstat(data)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        write_atomic("fleet.cert", cert, dir_fd=data, owner=owner)
        _atomic_json(ENROLL_FILE, {"url": url, "pin": pin, "fleet": fleet}, data, owner)
        update_toml(CONFIG_NAME, {"admission": "fleet", "fleet_key": fleet, "fleet_cert": "fleet.cert"},
                    dir_fd=data, comment="from the fleet enrollment", owner=owner)
        os.unlink(CLAIM_FILE, dir_fd=data)        # the token has done its work
        os.fsync(data)
        return fleet, identity.node_id
    finally:
        os.close(data)


# renewal, in the agent ------------------------------------------------------------------------------------------


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
        status, data = pinned_request(_sibling(self.enroll["url"], "/revoked"), self.enroll["pin"],
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
    answer = _post(_sibling(enroll["url"], "/renew"), enroll["pin"], renewal_request(identity, cert, enroll["fleet"]),
                   timeout)
    new = accept_certificate(answer, identity, enroll["fleet"])
    try:
        st = os.stat(path)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    except FileNotFoundError:
        owner = None
    write_atomic(path, new, 0o644, owner=owner)
    return new


def store_revocations(data_dir: str, data: bytes, fleet_key: bytes) -> bool:
    """Keep a revocation list fleet_key signed in data_dir and honour it, unless the one kept there (or
    honoured) is as new: an older list never replaces a newer one. Whether it was taken; CertificateError when
    it is not the fleet's."""
    new = parse_revocations(data, fleet_key)
    path = os.path.join(data_dir, REVOKED_FILE)
    try:
        with open(path, "rb") as f:
            held = parse_revocations(f.read(1 << 21), fleet_key)
        honour(held)
    except (OSError, CertificateError):
        held = None
    if held is not None and held.seq >= new.seq:
        return False
    write_atomic(path, data, 0o644)
    return honour(new)


def load_revocations(data_dir: str, fleet_key: bytes) -> None:
    """Honour the revocation list kept in data_dir (at the agent's start)."""
    path = os.path.join(data_dir, REVOKED_FILE)
    try:
        with open(path, "rb") as f:
            honour(parse_revocations(f.read(1 << 21), fleet_key))
    except FileNotFoundError:
        pass
    except (OSError, CertificateError) as exc:
        log.warning("%s is not used: %s", path, exc)


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
