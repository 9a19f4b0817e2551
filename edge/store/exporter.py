"""UnixFS export: file bytes (whole or a range), directory listings, paths and whole trees back onto disk.

Works over `get(cid) -> bytes`, which must return verified bytes (the store checks every block it reads).
Everything from the DAG is untrusted: names are checked before they touch the file system, depth is bounded,
and sizes in the DAG are used only to skip, never to allocate.
"""

import os
from dataclasses import dataclass

from edge.errors import DecodeError
from edge.ipld import hamt
from edge.ipld.cid import CID, DAG_PB, RAW, parse_cid
from edge.ipld.dagpb import PBNode, parse_pbnode
from edge.ipld.unixfs import DIRECTORY, FILE, HAMT_SHARD, RAW as UNIXFS_RAW, SYMLINK, UnixFSData, parse_unixfs

MAX_DEPTH = 64


@dataclass(frozen=True)
class Node:
    """A UnixFS node: kind is file, directory or symlink; size is the content size of a file."""

    cid: CID
    kind: str
    size: int
    pb: PBNode | None = None
    unixfs: UnixFSData | None = None


def load(get, cid: CID) -> Node:
    data = get(cid)
    if cid.codec == RAW:
        return Node(cid, "file", len(data))
    if cid.codec != DAG_PB:
        raise DecodeError(f"{cid} is {cid.codec_name}, not UnixFS (raw or dag-pb)")
    pb = parse_pbnode(data)
    if pb.data is None:
        raise DecodeError(f"{cid} is a DAG-PB node without UnixFS data")
    fs = parse_unixfs(pb.data)
    if fs.type in (FILE, UNIXFS_RAW):
        size = fs.filesize if fs.filesize is not None else len(fs.data or b"")
        return Node(cid, "file", size, pb, fs)
    if fs.type in (DIRECTORY, HAMT_SHARD):
        return Node(cid, "directory", 0, pb, fs)
    if fs.type == SYMLINK:
        return Node(cid, "symlink", len(fs.data or b""), pb, fs)
    raise DecodeError(f"{cid} is a UnixFS {fs.type_name} node, which has no content to export")


def _get_pb(get):
    return lambda cid: parse_pbnode(get(cid))


def list_dir(get, node: Node):
    """Yield (name, CID, tsize) for each entry of a directory node (plain or HAMT-sharded)."""
    if node.kind != "directory":
        raise DecodeError(f"{node.cid} is a {node.kind}, not a directory")
    if node.unixfs.type == HAMT_SHARD:
        for e in hamt.iter_shard(node.pb, _get_pb(get)):
            yield e.name, e.cid, e.tsize
        return
    for link in node.pb.links:
        yield link.name or "", link.cid, link.tsize or 0


def resolve(get, path: str) -> Node:
    """The node at `CID[/name/…]` (an /ipfs/ prefix is accepted)."""
    parts = [p for p in path.strip().removeprefix("/ipfs/").split("/") if p]
    if not parts:
        raise DecodeError("empty path: give a CID, optionally followed by /names")
    node = load(get, parse_cid(parts[0]))
    for i, name in enumerate(parts[1:]):
        if node.kind != "directory":
            raise DecodeError(f"{'/'.join(parts[:i + 1])} is a {node.kind}, not a directory")
        if node.unixfs.type == HAMT_SHARD:
            entry = hamt.lookup(node.pb, name, _get_pb(get))
            target = entry.cid if entry else None
        else:
            target = next((link.cid for link in node.pb.links if link.name == name), None)
        if target is None:
            raise FileNotFoundError(f"no entry {name!r} in {'/'.join(parts[:i + 1])}")
        node = load(get, target)
    return node


def iter_file(get, node: Node, offset: int = 0, length: int | None = None):
    """Yield the bytes of a file node from offset, at most length of them, block by block."""
    if node.kind != "file":
        raise DecodeError(f"{node.cid} is a {node.kind}, not a file")
    end = None if length is None else offset + length
    if node.pb is None:   # a single raw leaf
        yield get(node.cid)[offset:end]
        return
    yield from _file_range(get, node.cid, node.pb, node.unixfs, offset, end, 0)


def _file_range(get, cid, pb, fs, start, end, depth):
    if depth > MAX_DEPTH:
        raise DecodeError(f"file DAG under {cid} is deeper than {MAX_DEPTH} levels")
    pos = 0
    inline = fs.data or b""
    if inline:
        if end is None or start < len(inline):
            yield inline[start:end]
        pos = len(inline)
    sizes = fs.blocksizes
    if len(sizes) != len(pb.links):
        raise DecodeError(f"file node {cid} lists {len(sizes)} block sizes for {len(pb.links)} links")
    for link, size in zip(pb.links, sizes):
        child_start, child_end = pos, pos + size
        pos = child_end
        if child_end <= start:
            continue
        if end is not None and child_start >= end:
            break
        lo = max(start - child_start, 0)
        hi = None if end is None or end >= child_end else end - child_start
        if link.cid.codec == RAW:
            data = get(link.cid)
            if len(data) != size:
                raise DecodeError(f"leaf {link.cid} holds {len(data)} bytes; its parent {cid} says {size}")
            yield data[lo:hi] if (lo or hi is not None) else data
            continue
        child = parse_pbnode(get(link.cid))
        if child.data is None:
            raise DecodeError(f"{link.cid} in file {cid} has no UnixFS data")
        child_fs = parse_unixfs(child.data)
        if child_fs.type not in (FILE, UNIXFS_RAW):
            raise DecodeError(f"{link.cid} in file {cid} is a {child_fs.type_name}, not part of a file")
        yield from _file_range(get, link.cid, child, child_fs, lo, hi, depth + 1)


def _check_name(name: str, where: CID) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise DecodeError(f"directory {where} has an entry named {name!r}, which is not a safe file name; "
                          "refusing to export it")


def export(get, node: Node, dest: str, depth: int = 0) -> int:
    """Recreate node at dest (which must not exist); returns the content bytes written."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"directory tree under {node.cid} is deeper than {MAX_DEPTH} levels")
    if node.kind == "file":
        written = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            for piece in iter_file(get, node):
                f.write(piece)
                written += len(piece)
        return written
    if node.kind == "symlink":
        os.symlink(os.fsdecode(node.unixfs.data or b""), dest)
        return 0
    os.mkdir(dest)
    seen = set()
    total = 0
    for name, cid, _ in list_dir(get, node):
        _check_name(name, node.cid)
        if name in seen:
            raise DecodeError(f"directory {node.cid} lists {name!r} twice; refusing to export it")
        seen.add(name)
        total += export(get, load(get, cid), os.path.join(dest, name), depth + 1)
    return total
