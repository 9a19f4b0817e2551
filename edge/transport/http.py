"""A small HTTP/1.1 server on Trio, with h11 doing the protocol (sans-IO, strict, well kept).

Handlers are `async def handler(request) -> Response`; a body is bytes or an async iterator of bytes (sent
with Content-Length when known, else chunked). Limits: request head size, connections at once, idle time
between requests, time to send a request; a malformed request gets a 400 and the connection is closed.

Fault isolation: whatever goes wrong while serving one connection ends that connection only, never the server.
A handler that raises gets a 500 whose short error id is also in the log line. A body that fails after the
headers went out is cut off: the connection closes before the Content-Length is reached (or before the last
chunk), so a client sees a short body, never wrong bytes.
"""

import collections
import http
import logging
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field

import h11
import trio

from edge.logsafe import printable
from edge.ratelimit import UNLIMITED
from edge.service import Handle

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 256 * 1024
MAX_CONNECTIONS = 128
MAX_REFUSING = 64        # connections past the cap being told 503 at once; past both, closed at once
# once the server is half full, one client address may hold at most this share of max_connections: a host
# that opens connections and sits on them cannot take every slot from the rest of the LAN
CLIENT_SHARE = 4
IDLE_TIMEOUT = 15.0      # seconds a kept-alive connection may wait for its next request
REQUEST_TIMEOUT = 10.0   # seconds from a request's first byte to its end (a slow sender holds no slot longer)
SEND_TIMEOUT = 60.0      # seconds one write may wait for a client that reads nothing
RETRY_AFTER = 2          # seconds a client turned away for the connection cap is told to wait
SERVER = b"hearth"
# header values are sent as printable ASCII; anything else (a name with a euro sign) is percent-encoded
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7f))


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


class _CutOff(Exception):
    """A response body failed after its headers went out; the connection must close unfinished."""


class _HeadRefused(Exception):
    """h11 refused the response head a handler made (a bug): nothing was sent."""


def error_id() -> str:
    """A short id for an error, given to the client and written in the log line, to find one in the other."""
    return secrets.token_hex(4)


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    try:
        parts = urllib.parse.urlsplit(target)
    except ValueError as exc:          # e.g. "//[x": an unbalanced bracket in what would be a host
        raise BadRequest(f"the request target cannot be parsed: {exc}") from None
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


def header_value(value) -> bytes:
    """A header value as bytes: printable ASCII as is, anything else percent-encoded (never a crash, never a
    line break in a header)."""
    text = str(value)
    if all(" " <= c <= "~" for c in text):
        return text.encode("ascii")
    return urllib.parse.quote(text, safe=_HEADER_SAFE).encode("ascii")


async def _send_response(conn: h11.Connection, stream, request: Request, resp: Response, upload=UNLIMITED):
    """Send resp. A body iterator that raises after the headers went out raises _CutOff (the caller closes
    the connection unfinished); every write waits at most SEND_TIMEOUT for a client that reads nothing."""
    headers = [(b"server", SERVER)]
    body = resp.body
    length = len(body) if isinstance(body, (bytes, bytearray)) else resp.length
    for k, v in resp.headers.items():
        headers.append((header_value(k), header_value(v)))
    if length is not None and "content-length" not in resp.headers:
        headers.append((b"content-length", str(length).encode()))
    try:
        head = conn.send(h11.Response(status_code=resp.status, headers=headers, reason=_reason(resp.status)))
    except h11.LocalProtocolError as exc:
        await _close_body(body)
        raise _HeadRefused(str(exc)) from exc
    except BaseException:
        await _close_body(body)
        raise
    try:
        await _send(stream, head)
        if request.method == "HEAD" or resp.status in (204, 304):
            await _close_body(body)
            await _send(stream, conn.send(h11.EndOfMessage()))
            return
        if isinstance(body, (bytes, bytearray)):
            if body:
                await upload.spend(len(body))
                await _send(stream, conn.send(h11.Data(data=body)))
        else:
            it = body.__aiter__()
            while True:
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:   # noqa: BLE001 - the body failed: cut it off, keep the server
                    eid = error_id()
                    _CUT_LOG.warning("gateway: %s %s cut off after the headers [error %s]: %s", request.method,
                                     printable(request.target), eid, printable(f"{type(exc).__name__}: {exc}"))
                    raise _CutOff(eid) from exc
                if chunk:
                    await upload.spend(len(chunk))
                    await _send(stream, conn.send(h11.Data(data=chunk)))
        await _send(stream, conn.send(h11.EndOfMessage()))
    finally:
        await _close_body(body)


async def _send(stream, data: bytes) -> None:
    with trio.fail_after(SEND_TIMEOUT):
        await stream.send_all(data)


async def _close_body(body) -> None:
    if not isinstance(body, (bytes, bytearray)) and hasattr(body, "aclose"):
        try:
            await body.aclose()
        except Exception as exc:   # noqa: BLE001 - closing a failed body must not fail the connection again
            log.debug("closing a response body failed: %r", exc)


class _Limited:
    """A warning that clients can cause, at most once per `every` seconds; the next one says how many were left
    out (a client asking again and again for a corrupt file must not fill the log, or an SD card)."""

    def __init__(self, every: float = 1.0):
        self.every, self.last, self.left_out = every, -every, 0

    def warning(self, fmt: str, *args) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.left_out += 1
            return
        if self.left_out:
            fmt += " (and %d more like it left out of the log)"
            args = (*args, self.left_out)
        self.last, self.left_out = now, 0
        log.warning(fmt, *args)


_CUT_LOG = _Limited()


async def _handle_connection(stream, handler, peer: str, upload=UNLIMITED, state: "_State | None" = None):
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    state = state if state is not None else _State()
    async with stream:
        while not state.draining:   # draining: an answer just sent was the last on this connection
            # waiting for a request, or reading one, is what a drain ends at once; an answer it lets finish
            with trio.CancelScope() as waiting:
                state.waiting.add(waiting)
                try:
                    request = await _next_request(conn, stream, peer)
                finally:
                    state.waiting.discard(waiting)
            if request is None or waiting.cancelled_caught or state.draining:
                return   # a request read as the drain began is not started: the drain counts on none starting
            state.requests += 1
            state.answering += 1
            try:
                if not await _answer(conn, stream, request, handler, upload):
                    return
            finally:
                state.answering -= 1
                if state.draining and not state.answering:
                    state.quiet.set()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


async def _next_request(conn: h11.Connection, stream, peer: str) -> Request | None:
    """The next request; None when the connection is over (closed, idle, or a bad request answered)."""
    try:
        return await _read_request(conn, stream, peer)
    except trio.TooSlowError:
        await _send_error(conn, stream, 408, "the request took too long to arrive; send it whole")
    except (h11.RemoteProtocolError, BadRequest, UnicodeError) as exc:
        status = getattr(exc, "error_status_hint", 400)
        await _send_error(conn, stream, status, f"bad request: {exc}")
        await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass
    return None


async def _answer(conn: h11.Connection, stream, request: Request, handler, upload) -> bool:
    """Answer one request; False when the connection must close."""
    try:
        resp = await handler(request)
    except Exception as exc:       # noqa: BLE001 - one request's bug must not take the server down
        eid = error_id()
        log.error("gateway: %s %s failed [error %s]", request.method, printable(request.target), eid,
                  exc_info=exc)
        resp = Response.text(500, f"internal error {eid}; the node's log has the details")
    try:
        await _send_response(conn, stream, request, resp, upload)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, trio.TooSlowError, _CutOff):
        return False                   # closing now leaves the body short: the client knows it is cut
    except _HeadRefused as exc:
        eid = error_id()
        log.error("gateway: the response to %s broke the protocol [error %s]: %s",
                  printable(request.target), eid, exc)
        await _raw_reply(stream, 500, f"internal error {eid}; the node's log has the details")
        return False
    except h11.LocalProtocolError as exc:
        # after the head: a body longer or shorter than its Content-Length (content whose sizes lie),
        # which h11 refuses to send: cut off, as a failing body is
        _CUT_LOG.warning("gateway: %s %s cut off after the headers [error %s]: %s", request.method,
                         printable(request.target), error_id(), exc)
        return False
    return True


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


async def _send_error(conn, stream, status: int, message: str, headers=()):
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = (message + "\n").encode()
    try:
        await _send(stream, conn.send(h11.Response(status_code=status, reason=_reason(status), headers=[
            (b"server", SERVER), (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *headers])))
        await _send(stream, conn.send(h11.Data(data=body)))
        await _send(stream, conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, h11.LocalProtocolError,
            trio.TooSlowError):
        pass


async def _read_request(conn: h11.Connection, stream, peer: str) -> Request | None:
    """The next request: None when the client closed (or sat idle for IDLE_TIMEOUT) between requests;
    trio.TooSlowError when a request begun did not arrive whole within REQUEST_TIMEOUT."""
    head = None
    body = bytearray()
    deadline = trio.current_time() + IDLE_TIMEOUT
    started = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.move_on_at(deadline) as scope:
                data = await stream.receive_some(65536)
            if scope.cancelled_caught:
                if started:
                    raise trio.TooSlowError
                return None
            if data and not started:   # from the first byte, the whole request has REQUEST_TIMEOUT
                started = True
                deadline = trio.current_time() + REQUEST_TIMEOUT
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE and not started:
                return None   # closed between requests (with part of a head, h11 says what is wrong: a 400)
            continue
        if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            head = event
            _check_head(head)
            # a head already buffered by the last request arrived before its own deadline began
            if not started:
                started = True
                deadline = trio.current_time() + REQUEST_TIMEOUT
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


def _check_head(head: h11.Request) -> None:
    """The MAX_HEAD bound on the head as it was sent. h11's own bound applies only to a head still incomplete
    in its buffer, so a large head that arrives in one read would pass it."""
    size = len(head.method) + len(head.target) + 12 + sum(len(k) + len(v) + 4 for k, v in head.headers)
    if size > MAX_HEAD:
        err = BadRequest(f"the request head is over {MAX_HEAD} bytes")
        err.error_status_hint = 431
        raise err


class _State:
    """What a drain needs to know of an HTTP server's connections."""

    def __init__(self):
        self.draining = False
        self.waiting: set[trio.CancelScope] = set()   # connections waiting for (or reading) a request
        self.answering = 0                            # requests being answered
        self.quiet = trio.Event()                     # set once draining and nothing is being answered
        self.requests = 0
        self.open = 0                                 # connections open
        self.refused = 0                              # connections turned away past the cap


class HttpHandle(Handle):
    """A running HTTP server: its port, its figures, and its drain."""

    def __init__(self, name: str, port: int, state: _State, accepting: trio.CancelScope):
        super().__init__(name)
        self.port = port
        self._state = state
        self._accepting = accepting

    @property
    def draining(self) -> bool:
        return self._state.draining

    def stats(self) -> dict:
        s = self._state
        return {"port": self.port, "connections": s.open, "answering": s.answering, "requests": s.requests,
                "refused": s.refused, "draining": s.draining}

    async def drain(self) -> None:
        """Stop accepting connections and close those waiting for a request; return once the responses being
        sent have gone out whole (a long body keeps this waiting: the agent's deadline bounds it)."""
        s = self._state
        s.draining = True
        self._accepting.cancel()
        for scope in list(s.waiting):
            scope.cancel()
        if s.answering:
            await s.quiet.wait()


async def serve_http(handler, port: int, *, host: str = "0.0.0.0", max_connections: int = MAX_CONNECTIONS,
                     upload=UNLIMITED, name: str = "http", task_status=trio.TASK_STATUS_IGNORED):
    """Serve handler on host:port (host: one address or several, all on the same port) until cancelled;
    reports an HttpHandle (its port is the one bound). Past max_connections at once (or, once half of them
    are open, past a client address's share), a new connection is told 503 with Retry-After and closed at once
    (it holds no descriptor waiting for a slot); past MAX_REFUSING of those too, it is closed without a word.
    upload: the ByteRate bodies pay, or a function of the client's address giving it (the governor's lanes)."""
    state = _State()
    refusing = 0
    by_client: collections.Counter = collections.Counter()   # open connections per client address
    share = max(1, max_connections // CLIENT_SHARE)

    async def one(stream):
        nonlocal refusing
        try:
            peer = stream.socket.getpeername()[0]
        except (AttributeError, OSError):
            peer = ""
        if state.open >= max_connections or (state.open >= max_connections // 2 and by_client[peer] >= share):
            state.refused += 1
            if refusing >= MAX_REFUSING:
                await stream.aclose()
                return
            refusing += 1
            try:
                await _refuse(stream)
            finally:
                refusing -= 1
            return
        state.open += 1
        by_client[peer] += 1
        try:
            # upload: one ByteRate for all, or a function of the client's address (the governor's lanes)
            await _handle_connection(stream, handler, peer, upload(peer) if callable(upload) else upload, state)
        except Exception as exc:   # noqa: BLE001 - whatever one connection meets ends that connection only
            log.error("gateway: a connection failed [error %s]", error_id(), exc_info=exc)
        finally:
            state.open -= 1
            by_client[peer] -= 1
            if not by_client[peer]:
                del by_client[peer]

    hosts = [host] if isinstance(host, str) else list(host)   # the addresses the `listen` setting chose
    listeners = await trio.open_tcp_listeners(port, host=hosts[0])
    bound = listeners[0].socket.getsockname()[1]
    for more in hosts[1:]:   # the same port on each
        listeners += await trio.open_tcp_listeners(bound, host=more)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as accepting:
            task_status.started(HttpHandle(name, bound, state, accepting))
            await trio.serve_listeners(one, listeners, handler_nursery=nursery)
        for listener in listeners:   # drained: no new connection; those open finish in the nursery
            await listener.aclose()


async def _refuse(stream) -> None:
    """503 to a connection past the cap."""
    await _raw_reply(stream, 503, "this node is serving as many connections as it can; retry shortly",
                     {"retry-after": str(RETRY_AFTER)})


async def _raw_reply(stream, status: int, message: str, headers: dict | None = None) -> None:
    """A whole reply written without h11 (no request was read, or h11's state is spent), then the connection
    closed; what the client sent is read for a moment and dropped, so the kernel does not answer it with a
    reset that would destroy the reply in flight."""
    body = (message + "\n").encode()
    lines = [b"HTTP/1.1 %d %s" % (status, _reason(status)), b"server: " + SERVER,
             b"content-type: text/plain; charset=utf-8", b"content-length: %d" % len(body), b"connection: close"]
    lines += [header_value(k) + b": " + header_value(v) for k, v in (headers or {}).items()]
    try:
        async with stream:
            with trio.move_on_after(1.0):
                await stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n" + body)
                await _linger(stream, seconds=0.5, limit=MAX_HEAD)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass
