"""A pinned DAG cut into segments, and a segment's bytes and pieces.

Cutting. Every block under the root (interior dag-pb nodes too) goes into exactly one segment, in DAG order
(depth first, links in order, each block once: the order `hearth export` writes), and a segment holds at most
8 MiB of blocks. A subtree that fits in 8 MiB by its link's Tsize but not in what is left of the current segment
starts a new one, so a file of up to 8 MiB is never split. A stream's DAG is a directory of its HLS segment
files (edge/media): each media segment is such a file, so one HLS segment is one protected segment, and a player
that asks for a media segment waits for one segment's pieces, not two. Tsize comes from our own blocks and only
steers the cuts; a wrong one makes a segment cut early, never one over the bound.

Layout (pure functions): a 4-byte big-endian header length, the header in DAG-CBOR
{"v": 1, "index": [[cid bytes, offset, length], …]} (offsets into the data that follows), then the blocks
concatenated. Decoded layouts are checked block by block against their CIDs before anything is used.

Pieces: edge/store/stripe.py's encode_pieces (piece i is share i of every stripe; k == 1 is whole copies).
"""

import struct
from dataclasses import dataclass

from edge.errors import DecodeError, EdgeError
from edge.ipld import cbor
from edge.ipld.cid import CID, DAG_PB, RAW, cid_from_bytes
from edge.ipld.dagpb import parse_pbnode
from edge.protect import merkle
from edge.store.stripe import decode_pieces, encode_parts, encode_pieces

SEGMENT = 8 << 20
LAYOUT_VERSION = 1
MAX_BLOCKS = SEGMENT // 32          # far above any real segment (blocks of 256 KiB make 32 of them)
MAX_HEADER = MAX_BLOCKS * 60 + 64


class SegmentError(EdgeError):
    """A DAG cannot be cut (a block too big, an unknown codec) or a segment's bytes are not what they claim."""


@dataclass(frozen=True)
class Segment:
    """One segment: its blocks in DAG order, (CID, bytes)."""
    blocks: tuple

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.blocks)


def cut(get_block, root: CID, limit: int = SEGMENT):
    """Yield the segments of the DAG under root; get_block(cid) -> bytes reads a block (Store.get, in a worker
    thread on the agent's side). Raises SegmentError for a block over the limit or a codec we cannot walk."""
    seen = set()
    stack = [(root, None)]
    current, used = [], 0
    while stack:
        cid, tsize = stack.pop()
        key = bytes(cid.to_v1())
        if key in seen:
            continue
        seen.add(key)
        data = get_block(cid)
        if len(data) > limit:
            raise SegmentError(f"block {cid} is {len(data)} bytes, over the segment limit of {limit}")
        whole = tsize is not None and len(data) <= tsize <= limit   # a subtree that fits: keep it in one segment
        if current and (used + len(data) > limit or (whole and used + tsize > limit)):
            yield Segment(tuple(current))
            current, used = [], 0
        current.append((cid, data))
        used += len(data)
        if cid.codec == DAG_PB:
            links = parse_pbnode(data).links
            stack.extend(reversed([(link.cid, link.tsize) for link in links]))
        elif cid.codec != RAW:
            raise SegmentError(f"{cid} is {cid.codec_name}; only raw and dag-pb DAGs can be protected")
    if current:
        yield Segment(tuple(current))


def layout(segment: Segment) -> bytes:
    """The segment's bytes: header length, header (the index), the blocks."""
    return b"".join(_layout_parts(segment))


def _layout_parts(segment: Segment) -> list:
    """The segment's bytes in order, as parts: header length, header, then each block's own buffer."""
    index, offset = [], 0
    for cid, data in segment.blocks:
        index.append([bytes(cid), offset, len(data)])
        offset += len(data)
    header = cbor.dumps({"v": LAYOUT_VERSION, "index": index})
    return [struct.pack(">I", len(header)), header, *(d for _, d in segment.blocks)]


def parse_layout(raw) -> Segment:
    """The blocks of a segment's bytes, each checked against its CID; SegmentError naming what is wrong."""
    view = memoryview(raw).cast("B")
    if len(view) < 4:
        raise SegmentError("a segment is at least its 4-byte header length")
    (n,) = struct.unpack_from(">I", view)
    if n > MAX_HEADER or 4 + n > len(view):
        raise SegmentError(f"a segment's header of {n} bytes is over the bound or past its end")
    try:
        header = cbor.loads(view[4:4 + n])
    except DecodeError as exc:
        raise SegmentError(f"a segment's header is not DAG-CBOR: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != LAYOUT_VERSION or not isinstance(header.get("index"), list):
        raise SegmentError(f"a segment's header is {{v: {LAYOUT_VERSION}, index: [...]}}")
    body = view[4 + n:]
    blocks, expect = [], 0
    for entry in header["index"]:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], bytes)
                and all(isinstance(x, int) for x in entry[1:])):
            raise SegmentError("a segment's index entries are [cid, offset, length]")
        raw_cid, offset, length = entry
        if offset != expect or length < 0 or offset + length > len(body):
            raise SegmentError(f"a segment's index entry at offset {offset} is out of order or past its end")
        try:
            cid = cid_from_bytes(raw_cid)
        except DecodeError as exc:
            raise SegmentError(f"a segment's index names a bad CID: {exc}") from None
        data = bytes(body[offset:offset + length])
        if not cid.matches(data):
            raise SegmentError(f"block {cid} in the segment does not match its CID")
        blocks.append((cid, data))
        expect = offset + length
    if expect != len(body):
        raise SegmentError(f"a segment has {len(body) - expect} bytes past its last block")
    return Segment(tuple(blocks))


def encode(segment_bytes, k: int, m: int) -> list[bytearray]:
    """The k+m pieces of a segment's bytes."""
    return encode_pieces(segment_bytes, k, m)


def decode(pieces: dict[int, bytes], k: int, m: int, length: int) -> Segment:
    """The segment from any k of its pieces, its blocks verified against their CIDs."""
    return parse_layout(decode_pieces(pieces, k, m, length))


@dataclass(frozen=True)
class Prepared:
    """A segment ready to place: its blocks, its layout's length, its k+m pieces and their Merkle trees."""
    segment: Segment
    length: int
    pieces: list
    trees: list

    @property
    def roots(self) -> list[bytes]:
        return [t.root for t in self.trees]


def prepare(get_block, root: CID, k: int, m: int, limit: int = SEGMENT):
    """The owner's part of a protected pin, segment by segment (bounded memory): cut, lay out, encode, hash. The
    layout's parts are copied straight into the pieces (no whole copy of the segment made first)."""
    for seg in cut(get_block, root, limit):
        parts = _layout_parts(seg)
        pieces = encode_parts(parts, k, m)
        yield Prepared(seg, sum(len(p) for p in parts), pieces, [merkle.build(p) for p in pieces])
