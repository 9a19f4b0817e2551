"""The RTMP front of `hearth live publish rtmp://HOST:PORT/APP/KEY`: no media is taken before the key is checked.

FFmpeg's own RTMP listener (libavformat/rtmpproto.c in listen mode) only logs a mismatched app or stream
name as a warning and takes the push anyway (issue 20, finding 12). This gate speaks the publishing side of
RTMP itself, as far as an encoder (OBS, ffmpeg) needs: the handshake, the chunk stream, and the commands
connect, releaseStream, FCPublish, createStream and publish (AMF0). It compares the app and the stream key in
constant time (hmac.compare_digest) and closes the connection on a wrong one. An accepted publisher's audio,
video and metadata messages are FLV tags already; they go on as an FLV stream to the decoder process's
standard input (edge/media/liveworker.py). The media never passes through a port FFmpeg listens on: a relay
to a loopback listener would let any local user connect to that port and skip the key.

Bounded: at most MAX_PENDING connections (MAX_PENDING_PER_ADDRESS from one address) between accept and
publish, each given PUBLISH_WITHIN seconds and PRE_PUBLISH_BYTES bytes to get there; the chunk stream's own
bounds (message sizes, chunk streams, unfinished bytes) are in edge/media/rtmp.py. One publisher at a time: once
one is accepted the listening socket is closed.
"""
import hmac
import logging
import os
import socket
import struct
import threading
import time
import urllib.parse

from edge.logsafe import printable
from edge.media.errors import MediaError
from edge.media.rtmp import (MAX_MESSAGE, T_AGGREGATE, T_AUDIO, T_COMMAND, T_COMMAND3, T_DATA, T_DATA3, T_PEER_BW,
                             T_USER, T_VIDEO, T_WINDOW, ChunkStream, Closed, Refused, amf_decode_all, amf_encode)

log = logging.getLogger(__name__)

DEFAULT_PORT = 1935
HANDSHAKE = 1536
MAX_PENDING = 16
MAX_PENDING_PER_ADDRESS = 2
PUBLISH_WITHIN = 10.0           # seconds from accept to an accepted publish
PRE_PUBLISH_BYTES = 64 * 1024   # chunk-stream bytes before publish (commands are small)
WINDOW = 2_500_000              # bytes the publisher may send between our acknowledgements (we never wait)
END_COMMANDS = ("FCUnpublish", "deleteStream", "closeStream")


def parse_url(url: str) -> tuple[str, int, str, str]:
    """(host, port, app, key) of rtmp://HOST[:PORT]/APP/KEY. MediaError if a part is missing."""
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port or DEFAULT_PORT
    except ValueError:
        raise MediaError(f"{url}: the port is not a number from 1 to 65535") from None
    app, _, key = u.path.lstrip("/").partition("/")
    if u.query:
        key += "?" + u.query
    if u.scheme != "rtmp" or not u.hostname or not app or not key:
        raise MediaError(f"{url}: give the address to listen on, the app and the stream key: "
                         "rtmp://0.0.0.0:1935/live/KEY (an encoder then pushes to rtmp://THIS-NODE:1935/live/KEY)")
    return u.hostname, port, app, key


# -- reading a connection --------------------------------------------------------------------------------------

class _Reader:
    """Buffered reads from the socket, within a deadline (before publish) or an idle limit (after)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline: float | None = deadline
        self.idle = 0.0
        self.buf = bytearray()
        self.received = 0
        self.budget: int | None = PRE_PUBLISH_BYTES + 1 + 2 * HANDSHAKE

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise Refused(f"did not publish within {PUBLISH_WITHIN:.0f} s")
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(self.idle or None)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                if self.deadline is not None:
                    raise Refused(f"did not publish within {PUBLISH_WITHIN:.0f} s") from None
                raise Closed(f"the publisher sent nothing for {self.idle:.0f} s") from None
            except OSError as exc:
                raise Closed(f"the connection failed: {exc.strerror or exc}") from None
            if not data:
                raise Closed("the publisher hung up")
            self.received += len(data)
            if self.budget is not None and self.received > self.budget:
                raise Refused(f"sent more than {PRE_PUBLISH_BYTES} bytes before publishing")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


# -- one connection --------------------------------------------------------------------------------------------

def _flv_tag(mtype: int, timestamp: int, payload: bytes) -> bytes:
    return (bytes([mtype]) + len(payload).to_bytes(3, "big") + (timestamp & 0xFFFFFF).to_bytes(3, "big")
            + bytes([(timestamp >> 24) & 0xFF]) + b"\0\0\0" + payload + (11 + len(payload)).to_bytes(4, "big"))


SET_DATA_FRAME = amf_encode("@setDataFrame")
ON_METADATA = amf_encode("onMetaData")


class Publisher:
    """A connection that has published with the right app and key; `pump` hands its media on as FLV."""

    def __init__(self, sock: socket.socket, peer: str, chunks: ChunkStream):
        self.sock = sock
        self.peer = peer
        self.chunks = chunks
        self.closed = False

    def pump(self, write, idle: float) -> str:
        """Write the media as an FLV stream until the publisher stops, hangs up or is silent for idle
        seconds (or close() is called); returns why it ended. Backpressure is the caller's: while write
        blocks, nothing is read from the socket and TCP slows the publisher down."""
        reader = self.chunks.reader
        reader.deadline, reader.budget, reader.idle = None, None, idle
        self.chunks.max_message = MAX_MESSAGE
        header_sent = False
        try:
            while True:
                mtype, _, ts, payload = self.chunks.message()
                tags = []
                if mtype in (T_AUDIO, T_VIDEO):
                    tags.append((mtype, ts, payload))
                elif mtype in (T_DATA, T_DATA3):
                    payload = payload[1:] if mtype == T_DATA3 else payload
                    if payload.startswith(SET_DATA_FRAME):
                        payload = payload[len(SET_DATA_FRAME):]
                    if payload.startswith(ON_METADATA):
                        tags.append((T_DATA, ts, payload))
                elif mtype == T_AGGREGATE:
                    tags.extend(_aggregate(ts, payload))
                elif mtype in (T_COMMAND, T_COMMAND3):
                    values = amf_decode_all(payload[1:] if mtype == T_COMMAND3 else payload)
                    if values and values[0] in END_COMMANDS:
                        return "the publisher ended the stream"
                for tag in tags:
                    if not header_sent:
                        # as FFmpeg's RTMP demuxer does: the header says which streams the metadata announces
                        flags = _flags(tag[2]) if tag[0] == T_DATA else 0
                        write(b"FLV\x01" + bytes([flags]) + b"\x00\x00\x00\x09\x00\x00\x00\x00")
                        header_sent = True
                    write(_flv_tag(*tag))
        except Closed as exc:
            return "stopped" if self.closed else str(exc)
        except Refused as exc:
            return f"the publisher broke the protocol: {exc}"
        finally:
            self.close()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _flags(metadata: bytes) -> int:
    try:
        values = amf_decode_all(metadata)
    except Refused:
        return 0
    meta = values[1] if len(values) > 1 and isinstance(values[1], dict) else {}
    return (4 if "audiocodecid" in meta else 0) | (1 if "videocodecid" in meta else 0)


def _aggregate(ts: int, payload: bytes):
    """The FLV tags inside an aggregate message, their times made relative to the message's."""
    pos, first = 0, None
    while pos + 11 <= len(payload):
        mtype = payload[pos]
        size = int.from_bytes(payload[pos + 1:pos + 4], "big")
        sub_ts = int.from_bytes(payload[pos + 4:pos + 7], "big") | payload[pos + 7] << 24
        body = payload[pos + 11:pos + 11 + size]
        if len(body) < size:
            raise Refused("a truncated aggregate message")
        first = sub_ts if first is None else first
        if mtype in (T_AUDIO, T_VIDEO, T_DATA):
            yield mtype, (ts + sub_ts - first) & 0xFFFFFFFF, body
        pos += 11 + size + 4


def negotiate(sock: socket.socket, peer: str, app: str, key: str, within: float = PUBLISH_WITHIN) -> Publisher:
    """The handshake and the commands up to an accepted publish. Refused (the connection is the caller's to
    close) for anything else: not RTMP, a wrong app or key, too slow, too big, media before publish."""
    reader = _Reader(sock, time.monotonic() + within)
    c0 = reader.read(1)
    if c0 != b"\x03":
        raise Refused(f"not RTMP (version byte {c0[0]})")
    c1 = reader.read(HANDSHAKE)
    s1 = struct.pack(">II", int(time.monotonic() * 1000) & 0xFFFFFFFF, 0) + os.urandom(HANDSHAKE - 8)
    sock.settimeout(max(0.1, reader.deadline - time.monotonic()))
    sock.sendall(b"\x03" + s1 + c1)          # S0 S1 S2 (the plain handshake: S2 echoes C1)
    reader.read(HANDSHAKE)                    # C2
    chunks = ChunkStream(sock, reader)
    connected = False
    streams = 0
    while True:
        mtype, stream, _, payload = chunks.message()
        if mtype in (T_AUDIO, T_VIDEO, T_DATA, T_DATA3, T_AGGREGATE):
            raise Refused("media before publish")
        if mtype not in (T_COMMAND, T_COMMAND3):
            continue
        values = amf_decode_all(payload[1:] if mtype == T_COMMAND3 else payload)
        if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], float):
            raise Refused("a command that is not a name and a transaction id")
        name, txn = values[0], values[1]
        if name == "connect":
            obj = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
            theirs = obj.get("app")
            if not isinstance(theirs, str) or not hmac.compare_digest(theirs.rstrip("/").encode(), app.encode()):
                chunks.command("_error", txn, None, {"level": "error", "code": "NetConnection.Connect.Rejected",
                                                     "description": "unknown app"})
                raise Refused(f"wrong app {printable(theirs, 60)!r}")
            chunks.send(2, T_WINDOW, WINDOW.to_bytes(4, "big"))
            chunks.send(2, T_PEER_BW, WINDOW.to_bytes(4, "big") + b"\x02")
            chunks.command("_result", txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                           {"level": "status", "code": "NetConnection.Connect.Success",
                            "description": "Connection succeeded.", "objectEncoding": 0})
            connected = True
        elif not connected:
            raise Refused(f"{printable(name, 40)!r} before connect")
        elif name == "createStream":
            streams += 1
            if streams > 4:
                raise Refused("too many createStream")
            chunks.command("_result", txn, None, streams)
        elif name == "publish":
            theirs = values[3] if len(values) > 3 and isinstance(values[3], str) else ""
            if not hmac.compare_digest(theirs.encode(), key.encode()):
                chunks.command("onStatus", 0, None, {"level": "error", "code": "NetStream.Publish.BadName",
                                                     "description": "wrong stream key"}, stream=stream)
                raise Refused("wrong stream key")
            chunks.send(2, T_USER, b"\x00\x00" + stream.to_bytes(4, "big"))      # StreamBegin
            chunks.command("onStatus", 0, None, {"level": "status", "code": "NetStream.Publish.Start",
                                                 "description": "publishing"}, stream=stream)
            return Publisher(sock, peer, chunks)
        # releaseStream, FCPublish, _checkbw…: nothing to answer


# -- the listener ----------------------------------------------------------------------------------------------

class RtmpGate:
    """Listens on the URL's address; `wait` returns the first connection that publishes with the right key."""

    def __init__(self, url: str, within: float = PUBLISH_WITHIN):
        self.host, self.port, self.app, self.key = parse_url(url)
        self.within = within
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()
        self.pending: dict[str, int] = {}
        self.winner: Publisher | None = None
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.refused = 0
        self._quiet = 0
        self._logged = 0.0

    def listen(self) -> int:
        """Bind and start accepting; the port (the URL's, or the one chosen for port 0)."""
        try:
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(MAX_PENDING)
        except OSError as exc:
            raise MediaError(f"cannot listen for RTMP on {self.host}:{self.port}: {exc.strerror or exc}") from None
        sock.settimeout(0.5)
        self.sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._accept, name="rtmp-accept", daemon=True).start()
        return self.port

    def _accept(self):
        while not self.closed.is_set():
            try:
                conn, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self.closed.is_set():
                    return
                log.warning("accepting an RTMP connection failed: %s", exc.strerror or exc)
                time.sleep(0.5)             # out of descriptors: let some go before trying again
                continue
            ip = addr[0]
            with self.lock:
                busy = sum(self.pending.values()) >= MAX_PENDING or self.pending.get(ip, 0) >= MAX_PENDING_PER_ADDRESS
                if not busy:
                    self.pending[ip] = self.pending.get(ip, 0) + 1
            if busy:
                conn.close()
                self._refuse(ip, "too many connections waiting to publish")
                continue
            threading.Thread(target=self._handle, args=(conn, ip), name="rtmp-negotiate", daemon=True).start()

    def _handle(self, conn: socket.socket, ip: str):
        try:
            publisher = negotiate(conn, ip, self.app, self.key, self.within)
            with self.lock:
                first = self.winner is None and not self.closed.is_set()
                if first:
                    self.winner = publisher
            if not first:
                raise Refused("another publisher is live")
            self.ready.set()
            log.info("RTMP publisher %s accepted", printable(ip))
        except Refused as exc:
            conn.close()
            self._refuse(ip, str(exc))
        except (Closed, OSError) as exc:        # it went away by itself (a port scan, a health check)
            conn.close()
            log.debug("an RTMP connection from %s ended before publishing: %s", printable(ip), exc)
        finally:
            with self.lock:
                self.pending[ip] -= 1
                if not self.pending[ip]:
                    del self.pending[ip]

    def _refuse(self, ip: str, why: str):
        self.refused += 1
        now = time.monotonic()
        if now - self._logged < 1.0:        # a flood of refusals is one line a second, not a full journal
            self._quiet += 1
            return
        more = f" ({self._quiet} more refused since the last such line)" if self._quiet else ""
        log.warning("refused an RTMP connection from %s: %s%s", printable(ip), why, more)
        self._logged, self._quiet = now, 0

    def wait(self, stop: threading.Event | None = None) -> Publisher | None:
        """The accepted publisher (the listener is closed then), or None once stop is set."""
        while not self.ready.wait(0.2):
            if stop is not None and stop.is_set():
                return None
        self.close()
        return self.winner

    def close(self):
        self.closed.set()
        if self.sock is not None:
            self.sock.close()
