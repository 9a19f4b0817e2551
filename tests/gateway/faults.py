"""Bad content for the gateway's fault tests: a corrupt block on disk, a malformed UnixFS file, a file whose
leaves are held by no one."""

import os

from edge.ipld.cid import DAG_PB, RAW, CID
from edge.ipld.dagpb import PBLink, PBNode, serialize_pbnode
from edge.ipld.unixfs import FILE, UnixFSData, serialize_unixfs


def corrupt(store, cid: CID) -> None:
    """Overwrite the block's file with bytes of the same length that do not hash to it (a bad sector)."""
    path = store.files.path(cid)
    size = os.path.getsize(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(bytes(b ^ 0xFF for b in f.read(min(size, 64))))


def file_node(leaves: list[tuple[CID, int]]) -> tuple[CID, bytes]:
    """A UnixFS file root over raw leaves with the given block sizes (which may lie about the leaves)."""
    fs = UnixFSData(FILE, filesize=sum(size for _, size in leaves), blocksizes=tuple(size for _, size in leaves))
    block = serialize_pbnode(PBNode(serialize_unixfs(fs), tuple(PBLink(cid, "", size) for cid, size in leaves)))
    return CID.for_block(block, DAG_PB), block


def malformed_file(store, first_ok: bool) -> tuple[CID, bytes]:
    """A hash-valid file whose second leaf (or, without first_ok, first) is not the size its parent lists.
    Returns its root and the bytes a reader may see before the bad leaf."""
    good, bad = os.urandom(100_000), os.urandom(90_000)
    gcid, bcid = CID.for_block(good, RAW), CID.for_block(bad, RAW)
    leaves = [(gcid, len(good)), (bcid, 80_000)] if first_ok else [(bcid, 80_000), (gcid, len(good))]
    root, block = file_node(leaves)
    store.put_many([(gcid, good), (bcid, bad), (root, block)])
    return root, (good if first_ok else b"")


def leaves_held_by_no_one(store) -> CID:
    """A file whose root is here and whose leaves are nowhere."""
    leaves = [os.urandom(50_000) for _ in range(3)]
    root, block = file_node([(CID.for_block(d, RAW), len(d)) for d in leaves])
    store.put(root, block)
    return root
