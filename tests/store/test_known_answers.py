"""Root CIDs equal what IPFS gives for the same bytes and trees (`ipfs add --cid-version 1` defaults).

Where the answers come from:
- EMPTY and HELLO are the raw-leaf CIDs Kubo prints for an empty file and for "hello world" (no newline); they
  appear throughout the IPFS docs and were reproduced by the implementation below.
- Every answer was computed by an independent implementation, js-ipfs-unixfs-importer 17.1.1 (with
  blockstore-core 7.0.1, from the npm registry) on its defaults: CIDv1, raw leaves, fixed 256 KiB chunks, balanced
  layout with 174 links, HAMT sharding when the links' estimated bytes exceed 256 KiB, the same as Kubo's.
  The script fed it exactly the inputs `trees.py` builds (pattern(n): byte i = i mod 251).
"""

import io
import os
import pathlib
import shutil
import tempfile

import pytest

from edge.store import exporter
from edge.ipld.cid import parse_cid
from edge.store.importer import Importer, parse_chunker
from tests.store.trees import CHUNK, flat_tree, nested_tree, pattern

FILES = {
    "empty": (b"", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
    "hello world": (b"hello world", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
    "256 KiB": (CHUNK, "bafkreibruh455iawsviqslif5c7uurdcfdemh22mtnytyzvnzn75kpejxy"),
    "256 KiB + 1": (CHUNK + 1, "bafybeiexg2oqkfnj56l7fcmawswqbijt5shq4b5rg6a546uwpkqqzwjioi"),
    "174 x 256 KiB": (174 * CHUNK, "bafybeihpe5snhzneq7xs53nivmsopto5lrogo3wjynauqylqeym5a3irbm"),
    "174 x 256 KiB + 1": (174 * CHUNK + 1, "bafybeib4y7ghw2rq7bracc4xwtxrbzo7cfvagdpte2tmrkgwl6dyard3cm"),
}
NESTED = "bafybeiawndwtju3ccok62h4mnhnodhuxlh7bqft6tv42cbqsqdoeb2cudu"
# (files, name width, CID): 4096 links of 28 + 36 bytes is exactly the 256 KiB threshold (flat); one more shards
DIRECTORIES = {
    "at the threshold (flat)": (4096, 28, "bafybeihtiahuejuuiy37whfh6vcu2va3ajpluzwnwmls67bdcealgeqjoa"),
    "one entry over (HAMT)": (4097, 28, "bafybeiakytttkvhu5dkgvhzdn4ouwxmjupmmqxltnngbc5ck6mfmudgqdu"),
    "10,000 entries (HAMT, two levels)": (10000, 6, "bafybeiein2v4nnof7dy7wfzt7w7khh4otb7axnsgluwrtpcyx3lgri3qte"),
}
CHUNK_1000 = "bafybeicu44oicd5wdvlyfymb3dwkzvcvzl4fyizpmag436rsj7tfovgcye"   # 100,000 bytes, --chunker size-1000


@pytest.fixture
def tree_dir(tmp_path):
    """Where the trees to import and their exports go: memory (/dev/shm) where the machine has it. The trees are
    the importer's input, not a disk under test. On this machine's ext4 (no journal), a create soon after the
    suite's earlier tests deleted their files scans past every recently deleted inode (benchmarks/store.py
    tells the story): these 20,000 small files took 11.6 s of make test-unit against ~4 s in memory."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="hearth-trees-", dir="/dev/shm")
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class MemoryBlocks(dict):
    def put_many(self, blocks):
        for cid, data in blocks:
            self[bytes(cid.to_v1())] = bytes(data)

    def get(self, cid):
        return self[bytes(cid.to_v1())]


def _data(spec):
    return spec if isinstance(spec, bytes) else pattern(spec)


@pytest.mark.parametrize("name", FILES)
def test_file_cid_matches_ipfs_and_round_trips(name):
    spec, expected = FILES[name]
    data = _data(spec)
    blocks = MemoryBlocks()
    with Importer(blocks.put_many) as imp:
        result = imp.import_stream(io.BytesIO(data))
    assert str(result.cid) == expected
    assert result.size == len(data)
    node = exporter.load(blocks.get, result.cid)
    assert b"".join(exporter.iter_file(blocks.get, node)) == data


def test_small_fixed_chunks_match_ipfs():
    blocks = MemoryBlocks()
    with Importer(blocks.put_many, parse_chunker("size-1000")) as imp:
        result = imp.import_stream(io.BytesIO(pattern(100_000)))
    assert str(result.cid) == CHUNK_1000
    assert len(blocks) == 100 + 1


def _tree_equal(a, b):
    for dirpath, dirnames, filenames in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = os.path.join(b, rel)
        assert sorted(dirnames) == sorted(d for d in os.listdir(other) if os.path.isdir(os.path.join(other, d)))
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f1, open(os.path.join(other, name), "rb") as f2:
                assert f1.read() == f2.read(), os.path.join(rel, name)
    assert sum(len(f) + len(d) for _, d, f in os.walk(a)) == sum(len(f) + len(d) for _, d, f in os.walk(b))


def test_nested_directory_matches_ipfs_and_exports_exactly(tree_dir):
    src = nested_tree(str(tree_dir / "root"))
    blocks = MemoryBlocks()
    with Importer(blocks.put_many) as imp:
        result = imp.import_path(src)
    assert str(result.cid) == NESTED
    out = str(tree_dir / "out")
    exporter.export(blocks.get, exporter.load(blocks.get, result.cid), out)
    _tree_equal(src, out)
    node = exporter.resolve(blocks.get, f"{NESTED}/sub/deeper/c.txt")
    assert b"".join(exporter.iter_file(blocks.get, node)) == b"deep"


@pytest.mark.parametrize("name", DIRECTORIES)
def test_large_directory_shards_like_ipfs_and_exports_exactly(tree_dir, name):
    count, width, expected = DIRECTORIES[name]
    src = flat_tree(str(tree_dir / "d"), count, width)
    blocks = MemoryBlocks()
    with Importer(blocks.put_many) as imp:
        result = imp.import_path(src)
    assert str(result.cid) == expected
    root = exporter.load(blocks.get, result.cid)
    names = [n for n, _, _ in exporter.list_dir(blocks.get, root)]
    assert sorted(names) == sorted(os.listdir(src))
    last = sorted(names)[-1]
    found = exporter.resolve(blocks.get, f"{expected}/{last}")
    assert b"".join(exporter.iter_file(blocks.get, found)) == last.encode()
    out = str(tree_dir / "out")
    exporter.export(blocks.get, root, out)
    _tree_equal(src, out)


def test_cidv0_reads_back_as_its_v1():
    # base58btc of the sha2-256 multihash of no bytes: its v1 (dag-pb) carries the empty raw leaf's digest
    v0 = parse_cid("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
    assert v0.version == 0
    assert str(v0) == "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
    assert str(v0.to_v1()) == "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_fast_file_node_equals_the_general_serializer():
    from edge.ipld.cid import CID
    from edge.ipld.dagpb import PBLink, PBNode, serialize_pbnode
    from edge.store.importer import file_node
    from edge.ipld.unixfs import FILE, UnixFSData, serialize_unixfs
    distinct = [(CID.for_block(bytes([i])), 300 + i * 1000) for i in range(174)]
    # a file's usual node: the same size again and again, then a short last one; v0 and dag-pb children too
    alike = [(CID.for_block(bytes([i])), 262_144) for i in range(170)] + [
        (CID(0, 0x70, CID.for_block(b"v0").multihash), 262_158), (CID.for_block(b"pb", 0x70), 127),
        (CID.for_block(b"last"), 100)]
    for links, sizes in ((distinct, [200 + i * 999 for i in range(174)]),
                         (alike, [262_144] * 171 + [120, 100])):
        general = serialize_pbnode(PBNode(serialize_unixfs(UnixFSData(FILE, filesize=sum(sizes),
                                                                      blocksizes=tuple(sizes))),
                                          tuple(PBLink(c, "", t) for c, t in links)))
        assert file_node(links, sizes) == general


def test_buffers_fit_the_input_and_grow_across_files(tmp_path):
    """A small add does not allocate the importer's full 8 MiB batches; a tree whose files grow gets larger
    buffers as it goes, and every file still has IPFS's CID."""
    small = tmp_path / "small"
    small.write_bytes(b"hello world")
    blocks = MemoryBlocks()
    with Importer(blocks.put_many) as imp:
        assert str(imp.import_path(str(small)).cid) == FILES["hello world"][1]
        assert max(len(b) for b in imp.buffers) == len(b"hello world")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("256 KiB", "256 KiB + 1", "174 x 256 KiB + 1", "hello world"):
        (tree / name).write_bytes(_data(FILES[name][0]))
    with Importer(blocks.put_many, batch_bytes=4 << 20) as imp:
        imp.import_path(str(tree))
        assert max(len(b) for b in imp.buffers) == 4 << 20   # grown to one batch, never past it
        for name in ("256 KiB", "256 KiB + 1", "174 x 256 KiB + 1", "hello world"):
            assert str(imp.import_path(str(tree / name)).cid) == FILES[name][1]
