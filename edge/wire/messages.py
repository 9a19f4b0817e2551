"""Node-to-node messages (protocol version 1), as ZeroMQ multipart frames. See docs/protocol.md.

frame 0: header, 4 bytes: b"HE", version, message type
frame 1: body, a DAG-CBOR map (at most MAX_BODY bytes)
frame 2: payload, the block bytes (only Block, Put and ProbeData; at most the configured frame limit)
"""

import enum
import struct
from dataclasses import dataclass, field

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.ipld.cbor import head as cbor_head
from edge.ipld.cid import CID, cid_from_bytes

MAGIC = b"HE"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_BODY = 64 * 1024
MAX_HAVE = 1024
MAX_PAYLOAD = 2 << 20
MAX_ID = (1 << 63) - 1
MAX_TEXT = 512
MAX_PROBE = 256 * 1024   # bytes a throughput probe may ask for
MAX_GET_MANY = 64        # CIDs one GetMany may ask for (and entries one Blocks reply may carry)
MAX_CERT = 4096          # bytes of a fleet certificate in a Hello or Welcome
MAX_FREE = 1 << 62       # the free bytes a Hello or Welcome may claim


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1          # the request could not be parsed or makes no sense
    UNSUPPORTED_VERSION = 2  # no protocol version in common
    NOT_FOUND = 3            # this node does not hold the block
    TOO_LARGE = 4            # a frame or a range over the limit
    REFUSED = 5              # admission or policy says no (not in the fleet, writes not allowed)
    QUOTA = 6                # the store is full or over its quota
    BUSY = 7                 # the peer is over its request rate; retry later
    INTERNAL = 8             # this node failed; the request may be retried elsewhere


@dataclass(frozen=True)
class Hello:
    node: str
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    caps: tuple[str, ...] = ()
    cert: bytes | None = None
    free: int | None = None     # bytes free on the sender's store disk (told only to an authenticated peer)
    TYPE = 1


@dataclass(frozen=True)
class Welcome:
    node: str
    version: int
    caps: tuple[str, ...] = ()
    cert: bytes | None = None   # a fleet node's certificate: it proves membership to clients as they do to it
    free: int | None = None     # bytes free on the server's store disk (no longer in mDNS, which anyone reads)
    TYPE = 2


@dataclass(frozen=True)
class Have:
    id: int
    cids: tuple[CID, ...]
    TYPE = 3


@dataclass(frozen=True)
class HaveReply:
    id: int
    have: tuple[bool, ...]
    TYPE = 4


@dataclass(frozen=True)
class Get:
    id: int
    cid: CID
    offset: int = 0
    length: int | None = None
    TYPE = 5


@dataclass(frozen=True)
class Block:
    id: int
    cid: CID
    offset: int
    total: int
    data: bytes = field(repr=False, default=b"")
    TYPE = 6


@dataclass(frozen=True)
class Put:
    id: int
    cid: CID
    data: bytes = field(repr=False, default=b"")
    TYPE = 7


@dataclass(frozen=True)
class PutOk:
    id: int
    stored: bool
    TYPE = 8


@dataclass(frozen=True)
class Probe:
    """Send me size bytes of filler: a throughput probe (nodes whose Welcome lists the "probe" capability)."""

    id: int
    size: int
    TYPE = 9


@dataclass(frozen=True)
class ProbeData:
    id: int
    data: bytes = field(repr=False, default=b"")
    TYPE = 10


@dataclass(frozen=True)
class GetMany:
    """Whole blocks, several in one message (nodes whose Welcome lists "getmany"): entry i is the Get of
    cids[i] with request id id + i, answered by a Blocks reply that carries it or by its own Block or Error."""

    id: int
    cids: tuple[CID, ...]
    TYPE = 11

    def gets(self):
        return [Get(self.id + i, cid) for i, cid in enumerate(self.cids)]


@dataclass(frozen=True)
class Blocks:
    """Several whole blocks in one message: the block answering request ids[i] is sizes[i] bytes of the payload,
    after those of the entries before it. The receiver knows the CID it asked for under each id, and checks.
    On the wire ids and sizes are byte strings of big-endian integers (8 and 4 bytes each): read in one call."""

    ids: tuple[int, ...]
    sizes: tuple[int, ...]
    data: bytes = field(repr=False, default=b"")
    TYPE = 12

    def parts(self):
        """(request id, block bytes) of each entry."""
        if len(self.ids) == 1:
            yield self.ids[0], self.data
            return
        off = 0
        for rid, size in zip(self.ids, self.sizes):
            yield rid, self.data[off:off + size]
            off += size


@dataclass(frozen=True)
class Error:
    id: int
    code: ErrorCode
    message: str
    TYPE = 15


TYPES = {cls.TYPE: cls for cls in (Hello, Welcome, Have, HaveReply, Get, Block, Put, PutOk, Probe, ProbeData,
                                   GetMany, Blocks, Error)}
WITH_PAYLOAD = (Block, Put, ProbeData, Blocks)


def _bits(flags) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


# The two messages of every transfer (Get, Block) are written and read directly: the same bytes as the general
# DAG-CBOR path (keys in canonical order, shortest integers), several times cheaper. A body in any other
# layout takes the general path, which accepts or refuses it exactly as before.
_HEADERS = {(v, t): MAGIC + bytes([v, t]) for v in SUPPORTED_VERSIONS for t in TYPES}


def _get_body(msg: Get) -> bytes:
    raw = bytes(msg.cid)
    length = b"" if msg.length is None else b"\x66length" + cbor_head(0, msg.length)
    return b"".join((b"\xa4\x62id" if length else b"\xa3\x62id", cbor_head(0, msg.id), b"\x63cid", cbor_head(2, len(raw)),
                     raw, length, b"\x66offset", cbor_head(0, msg.offset)))


def _block_body(msg: Block) -> bytes:
    raw = bytes(msg.cid)
    return b"".join((b"\xa4\x62id", cbor_head(0, msg.id), b"\x63cid", cbor_head(2, len(raw)), raw, b"\x65total",
                     cbor_head(0, msg.total), b"\x66offset", cbor_head(0, msg.offset)))


class _Layout(Exception):
    """Not the canonical layout the fast readers know: take the general path."""


def _blocks_body(msg: Blocks) -> bytes:
    n = len(msg.ids)
    ids, sizes = struct.pack(f">{n}Q", *msg.ids), struct.pack(f">{n}L", *msg.sizes)
    return b"".join((b"\xa2\x63ids", cbor_head(2, len(ids)), ids, b"\x65sizes", cbor_head(2, len(sizes)), sizes))


def _get_many_body(msg: GetMany) -> bytes:
    raws = [bytes(c) for c in msg.cids]
    return b"".join((b"\xa2\x62id", cbor_head(0, msg.id), b"\x64cids", cbor_head(4, len(raws)),
                     *[(b"\x58\x24" if len(r) == 36 else cbor_head(2, len(r))) + r for r in raws]))


def _fast_blocks(b: bytes) -> tuple[bytes, bytes]:
    """The ids and sizes byte strings of a Blocks body in the canonical layout."""
    if b[:5] != b"\xa2\x63ids":
        raise _Layout
    n, off = _uint_at(b, 5, 2)
    ids, off = b[off:off + n], off + n
    if b[off:off + 6] != b"\x65sizes":
        raise _Layout
    n, off = _uint_at(b, off + 6, 2)
    sizes, off = b[off:off + n], off + n
    if off != len(b):
        raise _Layout
    return ids, sizes


def _fast_get_many(b: bytes) -> tuple[int, list]:
    """The id and the CIDs' bytes of a GetMany body in the canonical layout."""
    if b[:4] != b"\xa2\x62id":
        raise _Layout
    rid, off = _uint_at(b, 4)
    if b[off:off + 5] != b"\x64cids":
        raise _Layout
    n, off = _uint_at(b, off + 5, 4)
    if n > MAX_GET_MANY:
        raise _Layout
    raws = []
    for _ in range(n):
        if b[off:off + 2] == b"\x58\x24":
            size, off = 36, off + 2
        else:
            size, off = _uint_at(b, off, 2)
        if off + size > len(b):
            raise _Layout
        raws.append(b[off:off + size])
        off += size
    if off != len(b):
        raise _Layout
    return rid, raws


def _uint_at(b: bytes, off: int, major: int = 0) -> tuple[int, int]:
    first = b[off] - (major << 5)
    if 0 <= first < 24:
        return first, off + 1
    size = (1, 2, 4, 8)[first - 24] if 24 <= first <= 27 else 0
    if not size or off + 1 + size > len(b):
        raise _Layout
    value = int.from_bytes(b[off + 1:off + 1 + size], "big")
    if value < (24 if size == 1 else 1 << (4 * size)):   # not the shortest form: let the general path judge
        raise _Layout
    return value, off + 1 + size


def _uint_field(b: bytes, off: int, key: bytes) -> tuple[int, int]:
    """The unsigned integer (at most MAX_ID) after the text key (its CBOR bytes) at b[off:]; the offset after."""
    if b[off:off + len(key)] != key:
        raise _Layout
    value, off = _uint_at(b, off + len(key))
    if value > MAX_ID:
        raise _Layout
    return value, off


def _id_and_cid(b: bytes, maps: tuple[bytes, ...]) -> tuple[int, CID, int]:
    """The id and cid that open a Get or Block body in the canonical layout, and the offset after them."""
    if b[:1] not in maps:
        raise _Layout
    rid, off = _uint_field(b, 1, b"\x62id")
    if b[off:off + 4] != b"\x63cid":
        raise _Layout
    n, off = _uint_at(b, off + 4, 2)
    if n > 256 or off + n > len(b):
        raise _Layout
    return rid, cid_from_bytes(b[off:off + n]), off + n


def _fast_get(b: bytes) -> Get:
    rid, cid, off = _id_and_cid(b, (b"\xa3", b"\xa4"))
    length = None
    if b[0] == 0xa4:
        length, off = _uint_field(b, off, b"\x66length")
    offset, off = _uint_field(b, off, b"\x66offset")
    if off != len(b):
        raise _Layout
    return Get(rid, cid, offset, length)


def _fast_block_fields(b: bytes) -> tuple[int, CID, int, int]:
    rid, cid, off = _id_and_cid(b, (b"\xa4",))
    total, off = _uint_field(b, off, b"\x65total")
    offset, off = _uint_field(b, off, b"\x66offset")
    if off != len(b):
        raise _Layout
    return rid, cid, offset, total


def _block(fields, data, max_payload: int) -> Block:
    rid, cid, offset, total = fields
    if len(data) > max_payload:
        raise DecodeError(f"Block: payload of {len(data)} bytes is over the {max_payload}-byte limit")
    if offset + len(data) > total:
        raise DecodeError("Block: the payload runs past the block's total size")
    return Block(rid, cid, offset, total, bytes(data))


def _either(fast, body, general, cls):
    """fast(body) for a body in the canonical layout, else general(_Body) of the decoded map: the general path
    accepts or refuses what the fast one cannot read, with its own messages."""
    try:
        return fast(bytes(body))
    except (_Layout, DecodeError, IndexError):
        return general(_Body(cls.__name__, cbor.loads(body)))


def _get_many(rid, raws) -> GetMany:
    if not 1 <= len(raws) <= MAX_GET_MANY:
        raise DecodeError(f"GetMany: asks for {len(raws)} CIDs; 1 to {MAX_GET_MANY} are allowed")
    if not all(type(r) is bytes for r in raws):
        raise DecodeError("GetMany: cids must be byte strings")
    if isinstance(rid, bool) or not 0 <= rid <= MAX_ID - len(raws) + 1:
        raise DecodeError(f"GetMany: id {rid} is out of range for {len(raws)} requests")
    return GetMany(rid, tuple(cid_from_bytes(r) for r in raws))


def _blocks(ids: bytes, sizes: bytes, data, max_payload: int) -> Blocks:
    n = len(ids) // 8
    if not 1 <= n <= MAX_GET_MANY or len(ids) != 8 * n or len(sizes) != 4 * n:
        raise DecodeError(f"Blocks: 1 to {MAX_GET_MANY} entries, 8 bytes of id and 4 of size each")
    if len(data) > max_payload:
        raise DecodeError(f"Blocks: payload of {len(data)} bytes is over the {max_payload}-byte limit")
    ids, sizes = struct.unpack(f">{n}Q", ids), struct.unpack(f">{n}L", sizes)
    if max(ids) > MAX_ID:
        raise DecodeError("Blocks: an id is out of range")
    if sum(sizes) != len(data):
        raise DecodeError(f"Blocks: the sizes add up to {sum(sizes)} bytes, the payload has {len(data)}")
    return Blocks(ids, sizes, bytes(data))


def serialize_message(msg, version: int = PROTOCOL_VERSION) -> list[bytes]:
    """The frames of a message."""
    header = _HEADERS.get((version, msg.TYPE)) or MAGIC + bytes([version, msg.TYPE])
    kind = type(msg)
    if kind is Block:
        return [header, _block_body(msg), msg.data]
    if kind is Get:
        return [header, _get_body(msg)]
    if kind is Blocks:
        return [header, _blocks_body(msg), msg.data]
    if kind is GetMany:
        return [header, _get_many_body(msg)]
    if isinstance(msg, Hello):
        body = {"node": msg.node, "versions": list(msg.versions), "caps": list(msg.caps)}
        if msg.cert is not None:
            body["cert"] = msg.cert
        if msg.free is not None:
            body["free"] = msg.free
    elif isinstance(msg, Welcome):
        body = {"node": msg.node, "version": msg.version, "caps": list(msg.caps)}
        if msg.cert is not None:
            body["cert"] = msg.cert
        if msg.free is not None:
            body["free"] = msg.free
    elif isinstance(msg, Have):
        body = {"id": msg.id, "cids": [bytes(c) for c in msg.cids]}
    elif isinstance(msg, HaveReply):
        body = {"id": msg.id, "n": len(msg.have), "have": _bits(msg.have)}
    elif isinstance(msg, Get):
        body = {"id": msg.id, "cid": bytes(msg.cid), "offset": msg.offset}
        if msg.length is not None:
            body["length"] = msg.length
    elif isinstance(msg, Block):
        body = {"id": msg.id, "cid": bytes(msg.cid), "offset": msg.offset, "total": msg.total}
    elif isinstance(msg, Put):
        body = {"id": msg.id, "cid": bytes(msg.cid)}
    elif isinstance(msg, PutOk):
        body = {"id": msg.id, "stored": msg.stored}
    elif isinstance(msg, Probe):
        body = {"id": msg.id, "size": msg.size}
    elif isinstance(msg, ProbeData):
        body = {"id": msg.id}
    elif isinstance(msg, Error):
        body = {"id": msg.id, "code": int(msg.code), "message": msg.message[:MAX_TEXT]}
    else:
        raise TypeError(f"not a message: {msg!r}")
    frames = [header, cbor.dumps(body)]
    if isinstance(msg, WITH_PAYLOAD):
        frames.append(msg.data)
    return frames


class _Body:
    """Typed access to a decoded body, with errors that name the field."""

    def __init__(self, kind: str, value):
        if not isinstance(value, dict):
            raise DecodeError(f"{kind}: the body is not a map")
        self.kind, self.value = kind, value

    def get(self, key, types, required=True, default=None):
        if key not in self.value:
            if required:
                raise DecodeError(f"{self.kind}: field {key!r} is missing")
            return default
        v = self.value[key]
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            raise DecodeError(f"{self.kind}: field {key!r} has the wrong type")
        return v

    def uint(self, key, required=True, default=None, high=MAX_ID):
        v = self.get(key, (int,), required, default)
        if v is not None and not 0 <= v <= high:
            raise DecodeError(f"{self.kind}: field {key!r} = {v} is out of range")
        return v

    def text(self, key, required=True, default=None):
        v = self.get(key, (str,), required, default)
        if v is not None and len(v) > MAX_TEXT:
            raise DecodeError(f"{self.kind}: field {key!r} is longer than {MAX_TEXT} characters")
        return v

    def texts(self, key, limit=64):
        v = self.get(key, (list,), False, [])
        if len(v) > limit or not all(isinstance(x, str) and len(x) <= 64 for x in v):
            raise DecodeError(f"{self.kind}: field {key!r} must be at most {limit} short strings")
        return tuple(v)

    def cid(self, key):
        return cid_from_bytes(self.get(key, (bytes,)))

    def cert(self):
        cert = self.get("cert", (bytes,), required=False)
        if cert is not None and len(cert) > MAX_CERT:
            raise DecodeError(f"{self.kind}: cert is over {MAX_CERT} bytes")
        return cert


def parse_message(frames, max_payload: int = MAX_PAYLOAD):
    """The message in a list of frames; DecodeError saying what is wrong for anything else."""
    if not isinstance(frames, (list, tuple)) or not 2 <= len(frames) <= 3:
        count = len(frames) if isinstance(frames, (list, tuple)) else "?"
        raise DecodeError(f"a message has 2 or 3 frames, got {count}")
    header, body = bytes(frames[0]), frames[1]
    if len(header) != 4 or header[:2] != MAGIC:
        raise DecodeError("not a Hearth message (bad header)")
    version, kind = header[2], header[3]
    if version not in SUPPORTED_VERSIONS:
        raise DecodeError(f"protocol version {version} is not supported (this node speaks "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    cls = TYPES.get(kind)
    if cls is None:
        raise DecodeError(f"unknown message type {kind}")
    if len(body) > MAX_BODY:
        raise DecodeError(f"{cls.__name__}: body of {len(body)} bytes is over the {MAX_BODY}-byte limit")
    has_payload = len(frames) == 3
    if has_payload != (cls in WITH_PAYLOAD):
        raise DecodeError(f"{cls.__name__}: {'unexpected' if has_payload else 'missing'} payload frame")
    if cls is GetMany:
        return _get_many(*_either(_fast_get_many, body, lambda b: (b.get("id", (int,)), b.get("cids", (list,))),
                                  cls))
    if cls is Blocks:
        ids, sizes = _either(_fast_blocks, body, lambda b: (b.get("ids", (bytes,)), b.get("sizes", (bytes,))), cls)
        return _blocks(ids, sizes, frames[2], max_payload)
    if cls is Get:
        return _either(_fast_get, body, lambda b: Get(b.uint("id"), b.cid("cid"), b.uint("offset", False, 0),
                                                      b.uint("length", False, None)), cls)
    if cls is Block:
        fields = _either(_fast_block_fields, body,
                         lambda b: (b.uint("id"), b.cid("cid"), b.uint("offset"), b.uint("total")), cls)
        return _block(fields, frames[2], max_payload)
    b = _Body(cls.__name__, cbor.loads(body))
    if cls is Hello:
        versions = b.get("versions", (list,))
        if not versions or len(versions) > 16 or not all(isinstance(v, int) and 0 < v < 256 for v in versions):
            raise DecodeError("Hello: versions must list 1 to 16 protocol versions")
        return Hello(b.text("node"), tuple(versions), b.texts("caps"), b.cert(), b.uint("free", False, None, MAX_FREE))
    if cls is Welcome:
        return Welcome(b.text("node"), b.uint("version", high=255), b.texts("caps"), b.cert(),
                       b.uint("free", False, None, MAX_FREE))
    if cls is Have:
        raw = b.get("cids", (list,))
        if len(raw) > MAX_HAVE:
            raise DecodeError(f"Have: {len(raw)} CIDs is over the limit of {MAX_HAVE}")
        if not all(isinstance(c, bytes) for c in raw):
            raise DecodeError("Have: cids must be byte strings")
        return Have(b.uint("id"), tuple(cid_from_bytes(c) for c in raw))
    if cls is HaveReply:
        n = b.uint("n", high=MAX_HAVE)
        bits = b.get("have", (bytes,))
        if len(bits) != (n + 7) // 8:
            raise DecodeError(f"HaveReply: {len(bits)} bitmap bytes for {n} answers")
        return HaveReply(b.uint("id"), tuple(bool(bits[i // 8] & (0x80 >> (i % 8))) for i in range(n)))
    if cls is Put:
        data = frames[2]
        if len(data) > max_payload:
            raise DecodeError(f"Put: payload of {len(data)} bytes is over the {max_payload}-byte limit")
        return Put(b.uint("id"), b.cid("cid"), bytes(data))
    if cls is PutOk:
        return PutOk(b.uint("id"), b.get("stored", (bool,)))
    if cls is Probe:
        return Probe(b.uint("id"), b.uint("size", high=MAX_PROBE))
    if cls is ProbeData:
        data = frames[2]
        if len(data) > MAX_PROBE:
            raise DecodeError(f"ProbeData: payload of {len(data)} bytes is over the {MAX_PROBE}-byte limit")
        return ProbeData(b.uint("id"), bytes(data))
    code = b.uint("code", high=255)
    try:
        code = ErrorCode(code)
    except ValueError:
        code = ErrorCode.INTERNAL
    return Error(b.uint("id"), code, b.text("message"))
