"""The enrollment server's TLS: a self-signed certificate whose SHA-256 fingerprint every seed pins, and the
client that trusts that one certificate and no other (the pin names it, whatever the host name or any CA says)."""

import hashlib
import hmac
import json
import ssl

from edge.atomic import write_atomic
from edge.fleet.requests import ClaimError
from edge.logsafe import printable


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


def post(url: str, pin: str, body: bytes, timeout: float) -> dict:
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


def sibling(url: str, path: str) -> str:
    """The server's other request: https://host:port/claim -> https://host:port/renew."""
    base = url[:-len("/claim")] if url.endswith("/claim") else url.rstrip("/")
    return base + path
