"""The canonical layout of the two messages of every transfer (Get and Block) and of GetMany and Blocks, written
and read directly: the same bytes as the general DAG-CBOR path (keys in canonical order, shortest integers),
several times cheaper. The readers are bounded and take a body in exactly that layout or raise NotCanonical; a
body in any other layout takes the general path (edge/wire/codec.py), which accepts or refuses it exactly as
before.
"""

import struct

from edge.errors import DecodeError

from edge.ipld.cbor import head as cbor_head
from edge.ipld.cid import CID, cid_from_bytes
from edge.wire.messages import MAX_GET_MANY, MAX_ID, Block, Blocks, Get, GetMany


class NotCanonical(Exception):
    """Not the canonical layout the readers here know: take the general path."""


def get_body(msg: Get) -> bytes:
    raw = bytes(msg.cid)
    length = b"" if msg.length is None else b"\x66length" + cbor_head(0, msg.length)
    return b"".join((b"\xa4\x62id" if length else b"\xa3\x62id", cbor_head(0, msg.id), b"\x63cid", cbor_head(2, len(raw)),
                     raw, length, b"\x66offset", cbor_head(0, msg.offset)))


def block_body(msg: Block) -> bytes:
    raw = bytes(msg.cid)
    return b"".join((b"\xa4\x62id", cbor_head(0, msg.id), b"\x63cid", cbor_head(2, len(raw)), raw, b"\x65total",
                     cbor_head(0, msg.total), b"\x66offset", cbor_head(0, msg.offset)))


def blocks_body(msg: Blocks) -> bytes:
    n = len(msg.ids)
    ids, sizes = struct.pack(f">{n}Q", *msg.ids), struct.pack(f">{n}L", *msg.sizes)
    return b"".join((b"\xa2\x63ids", cbor_head(2, len(ids)), ids, b"\x65sizes", cbor_head(2, len(sizes)), sizes))


_HEADED_V1 = [b"\x58\x24\x01" + bytes((codec,)) for codec in range(0x80)]   # a 36-byte CIDv1's byte-string head


def get_many_body(msg: GetMany) -> bytes:
    # a v1 sha2-256 CID (nearly every one) is written from its fields: half the time of bytes() and a head each
    return b"".join((b"\xa2\x62id", cbor_head(0, msg.id), b"\x64cids", cbor_head(4, len(msg.cids)),
                     *[_HEADED_V1[c.codec] + c.multihash if c.version == 1 and c.codec < 0x80 and
                       len(c.multihash) == 34 else _cid_item(bytes(c)) for c in msg.cids]))


def _cid_item(raw: bytes) -> bytes:
    return cbor_head(2, len(raw)) + raw


def read_blocks(b: bytes) -> tuple[bytes, bytes]:
    """The ids and sizes byte strings of a Blocks body in the canonical layout."""
    if b[:5] != b"\xa2\x63ids":
        raise NotCanonical
    n, off = _uint_at(b, 5, 2)
    ids, off = b[off:off + n], off + n
    if b[off:off + 6] != b"\x65sizes":
        raise NotCanonical
    n, off = _uint_at(b, off + 6, 2)
    sizes, off = b[off:off + n], off + n
    if off != len(b):
        raise NotCanonical
    return ids, sizes


def read_get_many(b: bytes) -> tuple[int, list]:
    """The id and the CIDs' bytes of a GetMany body in the canonical layout."""
    if b[:4] != b"\xa2\x62id":
        raise NotCanonical
    rid, off = _uint_at(b, 4)
    if b[off:off + 5] != b"\x64cids":
        raise NotCanonical
    n, off = _uint_at(b, off + 5, 4)
    if n > MAX_GET_MANY:
        raise NotCanonical
    end = off + 38 * n   # the common case: every CID 36 bytes (v1, sha2-256), each headed 0x58 0x24: checked at once
    if end == len(b) and b[off:end:38] == b"\x58" * n and b[off + 1:end:38] == b"\x24" * n:
        return rid, [b[o:o + 36] for o in range(off + 2, end, 38)]
    raws = []
    for _ in range(n):
        if b[off:off + 2] == b"\x58\x24":
            size, off = 36, off + 2
        else:
            size, off = _uint_at(b, off, 2)
        if off + size > len(b):
            raise NotCanonical
        raws.append(b[off:off + size])
        off += size
    if off != len(b):
        raise NotCanonical
    return rid, raws


def _uint_at(b: bytes, off: int, major: int = 0) -> tuple[int, int]:
    first = b[off] - (major << 5)
    if 0 <= first < 24:
        return first, off + 1
    size = (1, 2, 4, 8)[first - 24] if 24 <= first <= 27 else 0
    if not size or off + 1 + size > len(b):
        raise NotCanonical
    value = int.from_bytes(b[off + 1:off + 1 + size], "big")
    if value < (24 if size == 1 else 1 << (4 * size)):   # not the shortest form: let the general path judge
        raise NotCanonical
    return value, off + 1 + size


def _uint_field(b: bytes, off: int, key: bytes) -> tuple[int, int]:
    """The unsigned integer (at most MAX_ID) after the text key (its CBOR bytes) at b[off:]; the offset after."""
    if b[off:off + len(key)] != key:
        raise NotCanonical
    value, off = _uint_at(b, off + len(key))
    if value > MAX_ID:
        raise NotCanonical
    return value, off


def _id_and_cid(b: bytes, maps: tuple[bytes, ...]) -> tuple[int, CID, int]:
    """The id and cid that open a Get or Block body in the canonical layout, and the offset after them."""
    if b[:1] not in maps:
        raise NotCanonical
    rid, off = _uint_field(b, 1, b"\x62id")
    if b[off:off + 4] != b"\x63cid":
        raise NotCanonical
    n, off = _uint_at(b, off + 4, 2)
    if n > 256 or off + n > len(b):
        raise NotCanonical
    return rid, cid_from_bytes(b[off:off + n]), off + n


def read_get(b: bytes) -> Get:
    rid, cid, off = _id_and_cid(b, (b"\xa3", b"\xa4"))
    length = None
    if b[0] == 0xa4:
        length, off = _uint_field(b, off, b"\x66length")
    offset, off = _uint_field(b, off, b"\x66offset")
    if off != len(b):
        raise NotCanonical
    return Get(rid, cid, offset, length)


def read_block_fields(b: bytes) -> tuple[int, CID, int, int]:
    rid, cid, off = _id_and_cid(b, (b"\xa4",))
    total, off = _uint_field(b, off, b"\x65total")
    offset, off = _uint_field(b, off, b"\x66offset")
    if off != len(b):
        raise NotCanonical
    return rid, cid, offset, total


def pack_bits(flags) -> bytes:
    """One bit per flag, the first in the high bit of the first byte (HaveReply's have, LeaseOk's found)."""
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def unpack_bits(bits: bytes, n: int, what: str) -> tuple[bool, ...]:
    """n flags from pack_bits's bytes; DecodeError naming what if their length does not fit n."""
    if len(bits) != (n + 7) // 8:
        raise DecodeError(f"{what}: {len(bits)} bitmap bytes for {n} answers")
    return tuple(bool(bits[i // 8] & (0x80 >> (i % 8))) for i in range(n))
