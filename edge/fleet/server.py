"""`hearth fleet enroll-server`: its directory (the enrollment key, the TLS certificate, the fleet key's
delegation, the revocation list) and the HTTPS server that answers claims and renewals and serves the list.

Each connection is one request, bounded in size and time; more than MAX_CONNECTIONS at once are closed as they
come; a malformed request is a 400; nothing a client sends ends the server.
"""

import json
import logging
import os
import ssl

from edge.fleet.claims import Claims, Issuer
from edge.fleet.requests import CERT_DAYS, MAX_REQUEST, ClaimError
from edge.fleet.revocations import REVOKED_FILE, served_list
from edge.fleet.tls import make_tls, server_context, tls_fingerprint
from edge.identity import Identity, public_key_of
from edge.logsafe import printable

log = logging.getLogger(__name__)

MAX_HEAD = 8192                    # bytes of a request head
MAX_CONNECTIONS = 32               # connections at once; more are closed at once
REQUEST_TIMEOUT = 15.0             # seconds a connection may take: TLS handshake, request, answer
WATCH = 1.0                        # seconds between looks at the claims file and revoked.cbor (for the broker)
KEY, TLS_CERT, TLS_KEY, DELEGATION = "enroll.key", "tls.pem", "tls.key", "delegation.cert"   # in its directory


def run_enrollment_server(state: str, claims_path: str, host: str, port: int, *, days: float = CERT_DAYS,
                          broker: str = "", broker_pid_file: str = "",
                          say=lambda line, stderr: print(line)) -> None:
    """`hearth fleet enroll-server`: make the server's enrollment key and TLS certificate in the directory
    `state` on the first start (and say both: the fleet's owner delegates to the key, seeds pin the certificate),
    then serve the devices of the claims file until interrupted. say(line, stderr) reports. EdgeError saying
    what to do when the delegation or the claims file is missing or not this fleet's. broker_pid_file: the
    broker's pid file; it gets SIGHUP whenever the password file changes (a revocation reaches it at once)."""
    import trio
    os.makedirs(state, mode=0o700, exist_ok=True)
    key_path, cert_path, tls_key = (os.path.join(state, n) for n in (KEY, TLS_CERT, TLS_KEY))
    if not os.path.exists(key_path):
        Identity.generate().save(key_path)
    key = Identity.load(key_path)
    if not os.path.exists(cert_path):
        make_tls(cert_path, tls_key, host)
    say(f"enrollment key {key.node_id}\nTLS fingerprint {tls_fingerprint(cert_path)}   (hearth fleet provision "
        "--pin)", True)
    delegation_path = os.path.join(state, DELEGATION)
    if not os.path.exists(delegation_path):
        raise ClaimError(f"no {delegation_path}: on the machine with the fleet key run `hearth fleet "
                         f"delegate {key.node_id} --key FLEET_KEY -o delegation.cert` and copy it there")
    credentials = None
    if broker:   # each node's own broker password comes with its certificate (edge/fleet/brokerauth.py)
        from edge.fleet.brokerauth import BrokerCredentials
        credentials = BrokerCredentials(broker, state, broker_pid_file)
    registry = Claims(claims_path, Issuer(key, _read_delegation(delegation_path), Claims.fleet_of(claims_path)),
                      broker=credentials)
    revoked_path = os.path.join(state, REVOKED_FILE)
    if credentials is not None:
        served_list(revoked_path, public_key_of(registry.fleet))    # honoured: its nodes leave the password file
        listed = registry.write_broker_passwords()
        say(f"broker {broker}: {listed} nodes in {credentials.passwd} (point mosquitto's password_file there; "
            + (f"it gets SIGHUP, pid from {broker_pid_file}, on each change)" if broker_pid_file else
               "it reads it again on SIGHUP: give --broker-pid-file to have revocations reach it at once)"), True)
    if host in ("0.0.0.0", "::"):
        say("listening on every interface, as --listen says", True)

    async def main():
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(lambda task_status: serve_enrollment(
                registry, server_context(cert_path, tls_key), host, port, days=days,
                revoked_path=revoked_path, say=say, task_status=task_status))
            if credentials is not None:
                nursery.start_soon(keep_broker_passwords, registry, revoked_path, say)
            say(f"enrolling devices of fleet {registry.fleet} at https://{host}:{bound}/claim", True)
    trio.run(main)


def _stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


async def keep_broker_passwords(claims: Claims, revoked_path: str, say=print, every: float = WATCH):
    """Keep the broker's password file (and so the broker) to the nodes enrolled and not revoked: every `every`
    seconds look whether the claims file (`hearth fleet claims --revoke` writes it from another process) or
    revoked.cbor (the operator copies a new list there) changed, and when either did, honour the list and
    rewrite the file, which tells the broker. Runs until cancelled; a failure is said, and tried again at the
    next change."""
    import trio
    fleet_key = public_key_of(claims.fleet)
    seen = (_stamp(claims.path), _stamp(revoked_path))
    while True:
        await trio.sleep(every)
        now = (_stamp(claims.path), _stamp(revoked_path))
        if now == seen:
            continue
        seen = now

        def sync():
            served_list(revoked_path, fleet_key)
            before = claims.broker.listed
            listed = claims.write_broker_passwords()
            return listed, before != claims.broker.listed
        try:
            listed, changed = await trio.to_thread.run_sync(sync)
        except (ClaimError, OSError) as exc:
            say(f"the broker's password file was not updated: {exc}", True)
            continue
        if changed:
            say(f"broker: {listed} nodes in {claims.broker.passwd} now", True)


def _read_delegation(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


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
            data = await trio.to_thread.run_sync(served_list, revoked_path, public_key_of(claims.fleet))
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
