"""The native block-file kernel (read_file, read_blocks, b32lower) against its pure-Python reference, on real
files: found, missing, corrupt, unreadable, and keys it must refuse."""

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import _blockio, ref_blockio
from edge.store.blockfiles import FANOUT_BYTES, NAME_PREFIX, BlockFiles
from edge.ipld.cid import CID

IMPLS = [pytest.param(_blockio, id="native"), pytest.param(ref_blockio, id="ref")]


@given(st.binary(max_size=80))
@settings(max_examples=300)
def test_b32lower_is_rfc4648_lower_unpadded(data):
    expected = base64.b32encode(data).rstrip(b"=").lower().decode()
    assert _blockio.b32lower(data) == ref_blockio.b32lower(data) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_b32lower_takes_bytes_only(impl):
    for bad in (None, "text", bytearray(b"x")):
        with pytest.raises(TypeError):
            impl.b32lower(bad)


@pytest.mark.parametrize("impl", IMPLS)
def test_read_file(impl, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 70000)
    st_ = os.stat(path)
    assert impl.read_file(str(path)) == (b"x" * 70000, (st_.st_ino, st_.st_size, st_.st_mtime_ns))
    assert impl.read_file(str(tmp_path / "absent")) is None
    with pytest.raises(IsADirectoryError):
        impl.read_file(str(tmp_path))
    (tmp_path / "empty").write_bytes(b"")
    assert impl.read_file(str(tmp_path / "empty"))[0] == b""


@pytest.fixture
def files(tmp_path):
    """Block files as the store names them: a good one, a corrupt one, a directory where a file should be."""
    files = BlockFiles(str(tmp_path))
    good, bad, odd = b"a good block" * 100, b"bytes that went bad", b"a directory in its place"
    cids = {name: CID.for_block(data) for name, data in (("good", good), ("bad", bad), ("odd", odd),
                                                         ("absent", b"never stored"))}
    for name, data in (("good", good), ("bad", b"rot" + bad)):
        os.makedirs(os.path.dirname(files.path(cids[name])), exist_ok=True)
        with open(files.path(cids[name]), "wb") as f:
            f.write(data)
    os.makedirs(files.path(cids["odd"]))
    return files, cids, good


@pytest.mark.parametrize("impl", IMPLS)
def test_read_blocks_reads_checks_and_reports_each(impl, files):
    files, cids, good = files
    dagpb = CID(0, 0x70, CID.for_block(good).multihash)   # the same digest as a CIDv0 names the same file
    keys = [bytes(cids[n]) for n in ("good", "bad", "absent", "odd")] + [bytes(dagpb.to_v1())]
    got = impl.read_blocks(files.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX)
    assert got[0] == (good, True)
    assert got[1] == (b"rotbytes that went bad", False)
    assert got[2] is None
    assert isinstance(got[3], IsADirectoryError) and files.path(cids["odd"]) in str(got[3])
    assert got[4] is None   # a dag-pb CID of the same bytes is another file name
    assert impl.read_blocks(files.blocks_dir, [], FANOUT_BYTES, NAME_PREFIX) == []


def test_native_and_reference_read_blocks_agree(files):
    files, cids, _ = files
    keys = [bytes(c) for c in cids.values()]
    native = _blockio.read_blocks(files.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX)
    ref = ref_blockio.read_blocks(files.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX)
    assert [type(x) for x in native] == [type(x) for x in ref]
    assert [x for x in native if not isinstance(x, OSError)] == [x for x in ref if not isinstance(x, OSError)]


def test_native_and_reference_agree_over_many_chunks_in_order(files):
    """The kernel opens and reads its keys in chunks: 50 keys (good, corrupt, missing, a directory, an empty
    block) cross several, and each answer stays in its key's place."""
    files, cids, _ = files
    empty = CID.for_block(b"")
    os.makedirs(os.path.dirname(files.path(empty)), exist_ok=True)
    open(files.path(empty), "wb").close()
    pool = [bytes(c) for c in cids.values()] + [bytes(empty)]
    keys = [pool[(7 * i) % len(pool)] for i in range(50)]
    native = _blockio.read_blocks(files.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX)
    ref = ref_blockio.read_blocks(files.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX)
    assert len(native) == 50 and [type(x) for x in native] == [type(x) for x in ref]
    assert [x for x in native if not isinstance(x, OSError)] == [x for x in ref if not isinstance(x, OSError)]
    assert [str(x) for x in native if isinstance(x, OSError)] == [str(x) for x in ref if isinstance(x, OSError)]
    assert (b"", True) in native


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("key", [b"", b"\x01\x55", bytes(CID(0, 0x70, CID.for_block(b"v0").multihash)),
                                 b"\x01\x55\x00\x05hello", b"\x01" * 65])
def test_read_blocks_refuses_keys_that_name_no_sha256_block(impl, key, tmp_path):
    with pytest.raises(ValueError, match="sha2-256|bytes"):
        impl.read_blocks(str(tmp_path), [key], FANOUT_BYTES, NAME_PREFIX)


@pytest.mark.parametrize("impl", IMPLS)
def test_read_blocks_refuses_keys_that_are_not_bytes(impl, tmp_path):
    with pytest.raises(ValueError, match="must be bytes"):
        impl.read_blocks(str(tmp_path), [bytearray(bytes(CID.for_block(b"x")))], FANOUT_BYTES, NAME_PREFIX)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fanout, prefix", [(0, ""), (1, "b"), (2, "b"), (3, "blk-")])
def test_read_blocks_follows_the_layout_it_is_handed(impl, fanout, prefix, tmp_path):
    """The layout is the store's (edge/store/blockfiles.py): the kernel finds a block wherever it says."""
    data = b"a block laid out elsewhere"
    key = bytes(CID.for_block(data))
    shard = key[-32:-32 + fanout].hex()
    where = os.path.join(str(tmp_path), *([shard] if shard else []))
    os.makedirs(where, exist_ok=True)
    with open(os.path.join(where, prefix + base64.b32encode(key).rstrip(b"=").lower().decode()), "wb") as f:
        f.write(data)
    got = impl.read_blocks(str(tmp_path), [key], fanout, prefix)
    assert got == [(data, True)]


SLOT = 16 * 1024   # what native/_blockio.pyx reads of a file before it knows the file's size


@pytest.mark.parametrize("size", [0, 1, SLOT - 1, SLOT, SLOT + 1, 2 * SLOT, 256 * 1024 + 3])
def test_sizes_about_the_first_read_whole_corrupt_and_short(size, tmp_path):
    """A file shorter than the kernel's first read is read whole by it; one that fills it is read on to its
    size. Around that edge, for good, corrupt (a byte flipped) and truncated files, with the store's directory
    held open or not, the kernel gives what the reference gives: the bytes on disk, and whether they match."""
    files = BlockFiles(str(tmp_path))
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    good, bad, short = CID.for_block(data), CID.for_block(data + b"bad"), CID.for_block(data + b"cut")
    on_disk = {good: data, bad: (data + b"bad")[:-1] + b"X", short: data + b"c"}
    for cid, raw in on_disk.items():
        os.makedirs(os.path.dirname(files.path(cid)), exist_ok=True)
        with open(files.path(cid), "wb") as f:
            f.write(raw)
    keys = [bytes(c) for c in on_disk]
    want = [(on_disk[good], True), (on_disk[bad], False), (on_disk[short], False)]
    assert ref_blockio.read_blocks(files.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX) == want
    assert _blockio.read_blocks(files.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX) == want
    assert files.read_many(keys) == want   # through the directory the store holds open


def test_a_held_directory_reads_as_the_path_does_and_outlives_a_closed_store(tmp_path):
    """BlockFiles holds blocks/ open for the kernel; close() (the store's) leaves it for a reader still at work,
    and it goes with the object."""
    files = BlockFiles(str(tmp_path))
    cid = CID.for_block(b"held")
    files.write_many([(cid, b"held")])
    files.close()
    assert files.read_many([bytes(cid)]) == [(b"held", True)]
    fd = files._dir_fd
    assert os.path.samestat(os.fstat(fd), os.stat(files.blocks_dir))
    del files
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fanout, prefix", [(-1, "b"), (9, "b"), (1, "a/b"), (1, "123456789")])
def test_read_blocks_refuses_a_layout_out_of_range(impl, fanout, prefix, tmp_path):
    with pytest.raises(ValueError, match="fanout_bytes|name_prefix"):
        impl.read_blocks(str(tmp_path), [bytes(CID.for_block(b"x"))], fanout, prefix)


def test_the_store_names_block_files_as_the_kernel_reads_them(tmp_path):
    files = BlockFiles(str(tmp_path))
    cid = CID.for_block(b"named once")
    assert files.path(cid) == f"{files.blocks_dir}/{cid.digest[:1].hex()}/{cid.to_v1()}"
    files.write_many([(cid, b"named once")])
    assert files.read_many([bytes(cid.to_v1())])[0][0] == b"named once"
