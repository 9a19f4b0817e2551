"""HAMT-sharded UnixFS directories, laid out exactly as go-unixfs and js-ipfs-unixfs-importer do.

A shard node is a DAG-PB node whose UnixFS Data has Type HAMTShard, Data = the occupied-bucket bitfield
(big-endian, minimal length), hashType 0x22 (murmur3-x64-64) and fanout 256. Each link is named with its
bucket index as two upper-case hex digits, followed by the entry name for an entry, or alone for a child
shard. The hash of a name is h1, the first 64-bit half of murmur3-x64-128 (seed 0), which Go writes
big-endian; each level consumes the next log2(fanout) bits from its most significant end.
"""

from dataclasses import dataclass

import mmh3

from edge.errors import DecodeError
from edge.ipld.cid import CID, DAG_PB
from edge.ipld.dagpb import PBLink, PBNode, serialize_pbnode
from edge.ipld.unixfs import HAMT_SHARD, UnixFSData, parse_unixfs, serialize_unixfs

MURMUR3_X64_64 = 0x22
DEFAULT_FANOUT = 256
MAX_FANOUT = 1024
HASH_BITS = 64


def hamt_hash(name: bytes) -> int:
    """The 64-bit hash of an entry name, as an integer whose high bits are consumed first."""
    return mmh3.hash64(name, 0, True, False)[0]


def _bits(fanout: int) -> int:
    if fanout < 2 or fanout > MAX_FANOUT or fanout & (fanout - 1):
        raise DecodeError(f"HAMT fanout {fanout} is not a power of two between 2 and {MAX_FANOUT}")
    return fanout.bit_length() - 1


def _index(h: int, depth: int, bits: int) -> int:
    shift = HASH_BITS - bits * (depth + 1)
    if shift < 0:
        raise DecodeError(f"HAMT is deeper than a 64-bit hash allows (depth {depth})")
    return (h >> shift) & ((1 << bits) - 1)


@dataclass(slots=True)
class Entry:
    name: str
    cid: CID
    tsize: int


class _Bucket:
    __slots__ = ("slots",)

    def __init__(self):
        self.slots: dict[int, "Entry | _Bucket"] = {}


def build_shard(entries, put_block, fanout: int = DEFAULT_FANOUT) -> tuple[CID, int]:
    """Shard entries (Entry objects with distinct names) into HAMT nodes; put_block(cid, bytes) stores each.

    Returns (root CID, cumulative size) like any directory node.
    """
    bits = _bits(fanout)
    root = _Bucket()
    for entry in entries:
        h = hamt_hash(entry.name.encode("utf-8"))
        bucket, depth = root, 0
        while True:
            idx = _index(h, depth, bits)
            here = bucket.slots.get(idx)
            if here is None:
                bucket.slots[idx] = entry
                break
            if isinstance(here, _Bucket):
                bucket, depth = here, depth + 1
                continue
            if here.name == entry.name:
                raise ValueError(f"duplicate directory entry {entry.name!r}")
            child = _Bucket()
            child.slots[_index(hamt_hash(here.name.encode("utf-8")), depth + 1, bits)] = here
            bucket.slots[idx] = child
            bucket, depth = child, depth + 1
    return _write_bucket(root, put_block, fanout)


def _write_bucket(bucket: _Bucket, put_block, fanout: int) -> tuple[CID, int]:
    width = len(f"{fanout - 1:X}")
    links = []
    total = 0
    bitfield = 0
    for idx in sorted(bucket.slots):
        bitfield |= 1 << idx
        item = bucket.slots[idx]
        prefix = f"{idx:0{width}X}"
        if isinstance(item, _Bucket):
            cid, size = _write_bucket(item, put_block, fanout)
            links.append(PBLink(cid, prefix, size))
        else:
            cid, size = item.cid, item.tsize
            links.append(PBLink(cid, prefix + item.name, size))
        total += size
    data = UnixFSData(HAMT_SHARD, data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
                      hash_type=MURMUR3_X64_64, fanout=fanout)
    block = serialize_pbnode(PBNode(serialize_unixfs(data), tuple(links)))
    cid = CID.for_block(block, DAG_PB)
    put_block(cid, block)
    return cid, total + len(block)


def shard_params(unixfs: UnixFSData) -> tuple[int, int]:
    """(fanout, prefix width) of a shard node's Data; DecodeError if it is not one this reader can walk."""
    if unixfs.type != HAMT_SHARD:
        raise DecodeError(f"not a HAMT shard (UnixFS type {unixfs.type_name})")
    if unixfs.hash_type != MURMUR3_X64_64:
        raise DecodeError(f"HAMT hash type {unixfs.hash_type} is not murmur3-x64-64 (0x22)")
    fanout = unixfs.fanout if unixfs.fanout is not None else 0
    _bits(fanout)
    return fanout, len(f"{fanout - 1:X}")


def _split(name: str, width: int, fanout: int) -> tuple[int, str | None]:
    prefix = name[:width]
    try:
        idx = int(prefix, 16)
    except ValueError:
        idx = -1
    if len(prefix) != width or idx < 0 or idx >= fanout or prefix != prefix.upper():
        raise DecodeError(f"HAMT link name {name!r} does not start with a {width}-digit bucket index")
    return idx, (name[width:] if len(name) > width else None)


def iter_shard(node: PBNode, get_node, max_depth: int = 64):
    """Yield Entry for every entry under a shard node; get_node(cid) returns a parsed child shard PBNode."""
    stack = [(node, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > max_depth:
            raise DecodeError(f"HAMT nested deeper than {max_depth} levels")
        if current.data is None:
            raise DecodeError("HAMT shard node has no UnixFS data")
        fanout, width = shard_params(parse_unixfs(current.data))
        children = []
        for link in current.links:
            _, name = _split(link.name or "", width, fanout)
            if name is None:
                children.append(link.cid)
            else:
                yield Entry(name, link.cid, link.tsize or 0)
        for cid in reversed(children):
            stack.append((get_node(cid), depth + 1))


def lookup(node: PBNode, name: str, get_node, max_depth: int = 64) -> Entry | None:
    """The entry called name under a shard node, following only the buckets its hash selects."""
    h = hamt_hash(name.encode("utf-8"))
    current, depth = node, 0
    while depth <= max_depth:
        if current.data is None:
            raise DecodeError("HAMT shard node has no UnixFS data")
        fanout, width = shard_params(parse_unixfs(current.data))
        want = _index(h, depth, fanout.bit_length() - 1)
        for link in current.links:
            idx, entry_name = _split(link.name or "", width, fanout)
            if idx != want:
                continue
            if entry_name is None:
                current, depth = get_node(link.cid), depth + 1
                break
            if entry_name == name:
                return Entry(name, link.cid, link.tsize or 0)
        else:
            return None
    raise DecodeError(f"HAMT nested deeper than {max_depth} levels")
