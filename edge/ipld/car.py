"""CAR (Content Addressable aRchive) files: v1 read and write, v2 read. Sans-IO parsing over a byte stream.

v1: varint(header length) | DAG-CBOR {roots: [CID], version: 1} | sections of varint(len) | CID | block.
v2: 11-byte pragma | 40-byte header (characteristics, data offset, data size, index offset, little-endian)
    | a whole v1 payload at the data offset | optional index (ignored: we read sequentially).
"""

from dataclasses import dataclass

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.ipld.cid import CID, decode_cid_bytes
from edge.ipld.varint import decode_uvarint, encode_uvarint

V2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")
V2_HEADER_SIZE = 40
MAX_HEADER = 1 << 16
MAX_SECTION = (2 << 20) + 512   # a block of at most 2 MiB plus its CID


@dataclass(frozen=True, slots=True)
class CarHeader:
    version: int
    roots: tuple[CID, ...]


def serialize_header(roots) -> bytes:
    body = cbor.dumps({"roots": [r for r in roots], "version": 1})
    return encode_uvarint(len(body)) + body


def serialize_section(cid: CID, data) -> bytes:
    raw = bytes(cid)
    return encode_uvarint(len(raw) + len(data)) + raw + bytes(data)


def parse_v1_header(body) -> CarHeader:
    value = cbor.loads(body)
    if not isinstance(value, dict):
        raise DecodeError("CAR header is not a map")
    version = value.get("version")
    if version != 1:
        raise DecodeError(f"CAR header version is {version!r}; a v1 header says 1")
    roots = value.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise DecodeError("CAR header 'roots' must be a list of CIDs")
    return CarHeader(1, tuple(roots))


def parse_section(buf) -> tuple[CID, bytes]:
    """(CID, block bytes) of one section body (without its length prefix)."""
    cid, off = decode_cid_bytes(buf)
    return cid, bytes(buf[off:])


class _Reader:
    """Exact reads from a binary file object, counting the offset for error messages."""

    def __init__(self, f, limit=None):
        self.f = f
        self.offset = 0
        self.limit = limit

    def read(self, n: int, what: str, allow_eof=False) -> bytes:
        if self.limit is not None:
            n_avail = self.limit - self.offset
            if n > n_avail:
                if allow_eof and n_avail == 0:
                    return b""
                raise DecodeError(f"CAR is truncated: {what} at byte {self.offset} needs {n} bytes, "
                                  f"the payload has {n_avail} left")
        data = self.f.read(n)
        if len(data) != n:
            if allow_eof and not data:
                return b""
            raise DecodeError(f"CAR is truncated: {what} at byte {self.offset} needs {n} bytes, got {len(data)}")
        self.offset += n
        return data

    def varint(self, what: str, allow_eof=False):
        raw = bytearray()
        start = self.offset
        while True:
            b = self.read(1, what, allow_eof=allow_eof and not raw)
            if not b:
                return None
            raw += b
            if b[0] < 0x80 or len(raw) >= 9:
                break
        try:
            value, _ = decode_uvarint(raw)
        except DecodeError as exc:
            raise DecodeError(f"CAR: bad {what} at byte {start}: {exc}") from None
        return value


def read_car(f):
    """Yield the CarHeader, then (CID, bytes) for each block, from a binary file object (v1 or v2).

    Blocks are not verified here: the store checks each against its CID. DecodeError says what and where.
    """
    start = f.read(len(V2_PRAGMA))
    if start == V2_PRAGMA:
        fixed = f.read(V2_HEADER_SIZE)
        if len(fixed) != V2_HEADER_SIZE:
            raise DecodeError("CARv2 header is truncated")
        data_offset = int.from_bytes(fixed[16:24], "little")
        data_size = int.from_bytes(fixed[24:32], "little")
        here = len(V2_PRAGMA) + V2_HEADER_SIZE
        if data_offset < here:
            raise DecodeError(f"CARv2 data offset {data_offset} points inside the header")
        skip = data_offset - here
        while skip:
            got = f.read(min(skip, 1 << 16))
            if not got:
                raise DecodeError("CARv2 is truncated before its data payload")
            skip -= len(got)
        reader = _Reader(f, limit=data_size)
        yield from _read_v1(reader, inner=True)
        return
    reader = _Reader(_Prefixed(start, f))
    yield from _read_v1(reader, inner=False)


def _read_v1(reader: _Reader, inner: bool):
    length = reader.varint("header length")
    if length == 0 or length > MAX_HEADER:
        raise DecodeError(f"CAR header length {length} is outside 1..{MAX_HEADER}: this is not a CAR file")
    header = parse_v1_header(reader.read(length, "header"))
    yield header
    while True:
        at = reader.offset
        size = reader.varint("section length", allow_eof=True)
        if size is None:
            return
        if size == 0 and inner:
            return   # some v2 writers pad the payload with zeros
        if size == 0 or size > MAX_SECTION:
            raise DecodeError(f"CAR section at byte {at} declares {size} bytes (allowed 1..{MAX_SECTION})")
        body = reader.read(size, "section")
        try:
            yield parse_section(body)
        except DecodeError as exc:
            raise DecodeError(f"CAR section at byte {at}: {exc}") from None


class _Prefixed:
    """A file object with some bytes already read put back in front."""

    def __init__(self, head: bytes, f):
        self.head = head
        self.f = f

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            if len(out) < n:
                out += self.f.read(n - len(out))
            return out
        return self.f.read(n)


def write_car(f, roots, blocks) -> int:
    """Write a CARv1 of (CID, bytes) blocks to f; returns the bytes written."""
    n = f.write(serialize_header(roots))
    for cid, data in blocks:
        n += f.write(serialize_section(cid, data))
    return n


def serialize_v2(roots, blocks) -> bytes:
    """A CARv2 (no index) wrapping a v1 payload; for tools and tests that need to produce one."""
    import io
    inner = io.BytesIO()
    write_car(inner, roots, blocks)
    payload = inner.getvalue()
    offset = len(V2_PRAGMA) + V2_HEADER_SIZE
    header = bytes(16) + offset.to_bytes(8, "little") + len(payload).to_bytes(8, "little") + bytes(8)
    return V2_PRAGMA + header + payload
