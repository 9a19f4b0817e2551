"""RTMP as far as the gate (edge/media/rtmpgate.py) speaks it: AMF0 values, the message types, and the chunk stream
that carries a publisher's messages, with its bounds: a command is at most MAX_COMMAND bytes and any message
MAX_MESSAGE; at most MAX_CHUNK_STREAMS chunk streams and MAX_PARTIAL bytes of unfinished messages; AMF values
nested at most MAX_AMF_DEPTH deep. Anything outside them raises Refused.
"""

import socket
import struct

MAX_COMMAND = 16 * 1024
MAX_MESSAGE = 8 * 1024 * 1024   # a keyframe of a high-rate 4K stream fits
MAX_PARTIAL = 16 * 1024 * 1024
MAX_CHUNK_STREAMS = 16
MAX_AMF_DEPTH = 8

T_CHUNK_SIZE, T_ABORT, T_ACK, T_USER, T_WINDOW, T_PEER_BW = 1, 2, 3, 4, 5, 6
T_AUDIO, T_VIDEO, T_DATA3, T_COMMAND3, T_DATA, T_COMMAND, T_AGGREGATE = 8, 9, 15, 17, 18, 20, 22


class Refused(Exception):
    """A connection that is not an acceptable publisher; the text says why (it is logged, never sent)."""


class Closed(Exception):
    """The publisher hung up or went silent."""


# -- AMF0 ------------------------------------------------------------------------------------------------------

def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise Refused("a truncated AMF value")
    return data[pos:pos + n], pos + n


def amf_decode(data: bytes, pos: int = 0, depth: int = 0):
    """(value, next position) of the AMF0 value at pos: numbers, booleans, strings, objects, arrays, null."""
    if depth > MAX_AMF_DEPTH:
        raise Refused("AMF values nested too deep")
    kind, pos = _take(data, pos, 1)
    kind = kind[0]
    if kind == 0:
        raw, pos = _take(data, pos, 8)
        return struct.unpack(">d", raw)[0], pos
    if kind == 1:
        raw, pos = _take(data, pos, 1)
        return raw != b"\0", pos
    if kind in (2, 12):
        raw, pos = _take(data, pos, 2 if kind == 2 else 4)
        text, pos = _take(data, pos, int.from_bytes(raw, "big"))
        return text.decode("utf-8", "replace"), pos
    if kind in (5, 6):
        return None, pos
    if kind in (3, 8):
        if kind == 8:
            _, pos = _take(data, pos, 4)            # an ECMA array's count is a hint; the end marker ends it
        out = {}
        while True:
            raw, pos = _take(data, pos, 2)
            name, pos = _take(data, pos, int.from_bytes(raw, "big"))
            if not name and pos < len(data) and data[pos] == 9:
                return out, pos + 1
            out[name.decode("utf-8", "replace")], pos = amf_decode(data, pos, depth + 1)
    if kind == 10:
        raw, pos = _take(data, pos, 4)
        count = int.from_bytes(raw, "big")
        if count > len(data) - pos:
            raise Refused("an AMF array longer than its message")
        items = []
        for _ in range(count):
            item, pos = amf_decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if kind == 11:
        raw, pos = _take(data, pos, 10)
        return struct.unpack(">d", raw[:8])[0], pos
    raise Refused(f"an AMF0 value of type {kind} (not used by publishers)")


def amf_decode_all(data: bytes) -> list:
    out, pos = [], 0
    while pos < len(data):
        value, pos = amf_decode(data, pos)
        out.append(value)
    return out


def amf_encode(value) -> bytes:
    if value is None:
        return b"\x05"
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, (int, float)):
        return b"\x00" + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode()
        return b"\x02" + len(raw).to_bytes(2, "big") + raw
    if isinstance(value, dict):
        body = b"".join(len(k.encode()).to_bytes(2, "big") + k.encode() + amf_encode(v) for k, v in value.items())
        return b"\x03" + body + b"\x00\x00\x09"
    raise TypeError(f"no AMF0 encoding for {type(value).__name__}")


# -- the chunk stream ------------------------------------------------------------------------------------------

class _ChunkState:
    __slots__ = ("ts_field", "timestamp", "length", "type", "stream", "buf")

    def __init__(self):
        self.ts_field = self.timestamp = self.length = self.type = self.stream = 0
        self.buf = bytearray()


class ChunkStream:
    """RTMP messages from the publisher's chunk stream (timestamps as FFmpeg's reader rebuilds them), protocol
    control messages handled here; messages to the publisher, always with full headers. reader is the gate's
    buffered reader: read(n) returns n bytes or raises Refused or Closed, received counts the bytes taken."""

    def __init__(self, sock: socket.socket, reader):
        self.sock = sock
        self.reader = reader
        self.chunk_size = 128
        self.max_message = MAX_COMMAND
        self.states: dict[int, _ChunkState] = {}
        self.partial = 0
        self.window = 0                 # the publisher's acknowledgement window (0: it asked for none)
        self.acked = 0

    def message(self) -> tuple[int, int, int, bytes]:
        """(type, message stream id, timestamp in ms, payload) of the next whole message."""
        read = self.reader.read
        while True:
            b = read(1)[0]
            fmt, csid = b >> 6, b & 0x3F
            if csid == 0:
                csid = 64 + read(1)[0]
            elif csid == 1:
                lo, hi = read(2)
                csid = 64 + lo + hi * 256
            st = self.states.get(csid)
            if st is None:
                if fmt != 0:
                    raise Refused("a chunk stream that does not start with a full header")
                if len(self.states) >= MAX_CHUNK_STREAMS:
                    raise Refused(f"more than {MAX_CHUNK_STREAMS} chunk streams")
                st = self.states[csid] = _ChunkState()
            if fmt < 3 and st.buf:
                raise Refused("a new message header in the middle of a message")
            ts_field = st.ts_field
            if fmt < 3:
                head = read((11, 7, 3)[fmt])
                ts_field = int.from_bytes(head[:3], "big")
                if fmt < 2:
                    st.length = int.from_bytes(head[3:6], "big")
                    st.type = head[6]
                if fmt == 0:
                    st.stream = int.from_bytes(head[7:11], "little")
            value = int.from_bytes(read(4), "big") if ts_field == 0xFFFFFF else ts_field
            if not st.buf:                  # a message begins: its timestamp (a delta unless fmt 0)
                st.timestamp = value if fmt == 0 else (st.timestamp + value) & 0xFFFFFFFF
                st.ts_field = ts_field
                if st.length > self.max_message:
                    raise Refused(f"a message of {st.length} bytes (at most {self.max_message} here)")
            need = min(self.chunk_size, st.length - len(st.buf))
            if self.partial + need > MAX_PARTIAL:
                raise Refused(f"more than {MAX_PARTIAL} bytes of unfinished messages")
            st.buf += read(need)
            self.partial += need
            self._acknowledge()
            if len(st.buf) < st.length:
                continue
            payload = bytes(st.buf)
            self.partial -= len(st.buf)
            st.buf = bytearray()
            if st.type == T_CHUNK_SIZE:
                size = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
                if not 1 <= size <= 0xFFFFFF:
                    raise Refused(f"a chunk size of {size}")
                self.chunk_size = size
            elif st.type == T_ABORT and len(payload) >= 4:
                other = self.states.get(int.from_bytes(payload[:4], "big"))
                if other is not None:
                    self.partial -= len(other.buf)
                    other.buf = bytearray()
            elif st.type == T_WINDOW and len(payload) >= 4:
                self.window = int.from_bytes(payload[:4], "big")
            elif st.type not in (T_ACK, T_USER, T_PEER_BW):
                return st.type, st.stream, st.timestamp, payload

    def _acknowledge(self):
        if self.window and self.reader.received - self.acked >= self.window:
            self.acked = self.reader.received
            self.send(2, T_ACK, (self.acked & 0xFFFFFFFF).to_bytes(4, "big"))

    def send(self, csid: int, mtype: int, payload: bytes, stream: int = 0):
        out = bytearray([csid]) + b"\0\0\0" + len(payload).to_bytes(3, "big") + bytes([mtype]) \
            + stream.to_bytes(4, "little")
        for off in range(0, len(payload), 128):
            if off:
                out.append(0xC0 | csid)
            out += payload[off:off + 128]
        self.sock.sendall(out)

    def command(self, *values, stream: int = 0):
        self.send(3 if stream == 0 else 5, T_COMMAND, b"".join(amf_encode(v) for v in values), stream)
