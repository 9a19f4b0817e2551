"""A small HTTP/1.1 server on Trio, with h11 doing the protocol (sans-IO, strict, well kept).

Handlers are `async def handler(request) -> Response`; a body is bytes or an async iterator of bytes (sent
with Content-Length when known, else chunked). Limits: request head size, connections at once, idle time
between requests; a malformed request gets a 400 and the connection is closed, never a crash.
"""

import http
import logging
import urllib.parse
from dataclasses import dataclass, field

import h11
import trio

from edge.ratelimit import UNLIMITED

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 256 * 1024
MAX_CONNECTIONS = 128
IDLE_TIMEOUT = 30.0
SEND_TIMEOUT = 60.0
SERVER = b"hearth"


@dataclass
class Request:
    method: str
    target: str
    path: str                      # percent-decoded
    query: dict[str, str]
    headers: dict[str, str]        # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    peer: str = ""


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: object = b""             # bytes, or an async iterator of bytes
    length: int | None = None      # for an iterator body: its length if known

    @classmethod
    def text(cls, status: int, message: str, headers: dict | None = None) -> "Response":
        return cls(status, {"content-type": "text/plain; charset=utf-8", **(headers or {})},
                   (message.rstrip("\n") + "\n").encode())


class BadRequest(Exception):
    pass


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        raise BadRequest("absolute-form request targets are not served")
    path = urllib.parse.unquote(parts.path, errors="strict")
    if not path.startswith("/") or "\0" in path:
        raise BadRequest("the path must start with /")
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return path, query


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


async def _send_response(conn: h11.Connection, stream, request: Request, resp: Response, upload=UNLIMITED):
    headers = [(b"server", SERVER)]
    body = resp.body
    length = len(body) if isinstance(body, (bytes, bytearray)) else resp.length
    for k, v in resp.headers.items():
        headers.append((k.encode("latin-1"), str(v).encode("latin-1")))
    if length is not None and "content-length" not in resp.headers:
        headers.append((b"content-length", str(length).encode()))
    await stream.send_all(conn.send(h11.Response(status_code=resp.status, headers=headers,
                                                 reason=_reason(resp.status))))
    if request.method == "HEAD" or resp.status in (204, 304):
        if not isinstance(body, (bytes, bytearray)) and hasattr(body, "aclose"):
            await body.aclose()
        await stream.send_all(conn.send(h11.EndOfMessage()))
        return
    if isinstance(body, (bytes, bytearray)):
        if body:
            await upload.spend(len(body))
            await stream.send_all(conn.send(h11.Data(data=body)))
    else:
        try:
            async for chunk in body:
                if chunk:
                    await upload.spend(len(chunk))
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
        finally:
            if hasattr(body, "aclose"):
                await body.aclose()
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _handle_connection(stream, handler, peer: str, upload=UNLIMITED):
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    async with stream:
        while True:
            try:
                with trio.fail_after(IDLE_TIMEOUT):
                    request = await _read_request(conn, stream, peer)
            except trio.TooSlowError:
                return
            except (h11.RemoteProtocolError, BadRequest, UnicodeDecodeError) as exc:
                status = getattr(exc, "error_status_hint", 400)
                await _send_error(conn, stream, status, f"bad request: {exc}")
                await _linger(stream)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                return
            if request is None:
                return
            try:
                resp = await handler(request)
            except Exception:              # noqa: BLE001 - one request's bug must not take the server down
                log.exception("gateway: %s %s failed", request.method, request.target)
                resp = Response.text(500, "internal error; the node's log has the details")
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    await _send_response(conn, stream, request, resp, upload)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, trio.TooSlowError):
                return
            except h11.LocalProtocolError as exc:
                log.warning("gateway: response to %s broke the protocol: %s", request.target, exc)
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


async def _linger(stream, seconds: float = 1.0, limit: int = 1 << 20):
    """Close politely after an error: stop sending, then read and drop what the client is still sending for a
    moment, so the kernel does not answer it with a reset that would destroy the error reply in flight."""
    try:
        await stream.send_eof()
        with trio.move_on_after(seconds):
            got = 0
            while got < limit:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                got += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, AttributeError):
        pass


async def _send_error(conn, stream, status: int, message: str):
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = (message + "\n").encode()
    try:
        await stream.send_all(conn.send(h11.Response(status_code=status, reason=_reason(status), headers=[
            (b"server", SERVER), (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()), (b"connection", b"close")])))
        await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, h11.LocalProtocolError):
        pass


async def _read_request(conn: h11.Connection, stream, peer: str) -> Request | None:
    head = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                err = BadRequest(f"the request body is over {MAX_BODY} bytes")
                err.error_status_hint = 413
                raise err
        elif isinstance(event, h11.EndOfMessage):
            break
    target = head.target.decode("latin-1")
    path, query = parse_target(target)
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    return Request(head.method.decode("ascii"), target, path, query, headers, bytes(body), peer)


async def serve_http(handler, port: int, *, host: str = "0.0.0.0", max_connections: int = MAX_CONNECTIONS,
                     upload=UNLIMITED, task_status=trio.TASK_STATUS_IGNORED):
    """Serve handler on host:port until cancelled; reports the bound port. Connections beyond
    max_connections wait in the kernel's backlog instead of costing memory here."""
    limit = trio.Semaphore(max_connections)

    async def one(stream):
        async with limit:
            try:
                sock = stream.socket
                peer = sock.getpeername()[0]
            except (AttributeError, OSError):
                peer = ""
            await _handle_connection(stream, handler, peer, upload)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(one, listeners, handler_nursery=nursery)
