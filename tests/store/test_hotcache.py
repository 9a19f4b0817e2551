"""The store's memory cache of blocks read more than once: what enters, what a hit costs, and that a block
removed, replaced or quarantined on disk is never served from memory."""

import os

import pytest

from edge.store import Store
from edge.ipld.cid import CID
from edge.store.errors import BlockNotFound, CorruptBlock


def blocks(n, size=1000):
    out = [os.urandom(size) for _ in range(n)]
    return [(CID.for_block(d), d) for d in out]


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "s"), hot_bytes=64_000) as s:
        yield s


def rot_in_place(store, cid):
    """Flip a byte of the block's file and put its mtime back: the same file, bad bytes (a decaying card)."""
    path = store.files.path(cid)
    st = os.stat(path)
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_block_read_twice_is_served_from_memory_without_reading_its_file(store):
    (cid, data), = blocks(1)
    store.put(cid, data)
    assert store.get(cid) == data and store.hot.stat()["blocks"] == 0   # once: only remembered
    assert store.get(cid) == data and store.hot.stat()["blocks"] == 1   # twice: kept
    rot_in_place(store, cid)
    assert store.get(cid) == data and store.hot.hits == 1   # the checked bytes, not the file's
    assert store.stat()["hot"] == {"blocks": 1, "bytes": 1000, "limit": 64_000, "hits": 1}


def test_a_block_removed_by_another_process_is_not_served_from_memory(store, tmp_path):
    (cid, data), = blocks(1)
    store.put(cid, data)
    store.get(cid), store.get(cid)
    with Store(store.root) as other:   # `hearth gc` in another process: this one's cache cannot be told
        assert other.gc() == (1, 1000)
    with pytest.raises(BlockNotFound):
        store.get(cid)
    assert store.hot.stat()["blocks"] == 0


def test_a_replaced_file_is_read_and_checked_again(store):
    (cid, data), = blocks(1)
    store.put(cid, data)
    store.get(cid), store.get(cid)
    path = store.files.path(cid)
    os.unlink(path)
    with open(path, "wb") as f:   # a new file (another inode) with bad bytes
        f.write(b"\0" * len(data))
    with pytest.raises(CorruptBlock):
        store.get(cid)
    assert store.hot.stat()["blocks"] == 0 and not store.has(cid)


def test_gc_and_quarantine_here_drop_the_cached_block(store):
    (a, da), (b, db) = blocks(2)
    store.put_many([(a, da), (b, db)])
    for cid in (a, b, a, b):
        store.get(cid)
    assert store.hot.stat()["blocks"] == 2
    store.gc()   # nothing pinned: both go
    assert store.hot.stat()["blocks"] == 0


def test_the_cache_is_bounded_and_a_scan_does_not_push_out_what_is_popular(store):
    hot = blocks(8, 4000)            # 32 KB of popular blocks
    scan = blocks(200, 4000)         # 800 KB read once (an export, a fetch, a verify)
    big = blocks(1, 9000)            # over an eighth of the cache: never kept
    store.put_many(hot + scan + big)
    for _ in range(2):
        for cid, _ in hot + big:
            store.get(cid)
    for cid, _ in scan:
        store.get(cid)
    assert store.hot.stat()["blocks"] == 8
    for cid, data in hot:
        assert store.get(cid) == data
    assert store.hot.hits == 8
    more = blocks(30, 4000)          # many blocks read twice: the least recently used go, the bound holds
    store.put_many(more)
    for _ in range(2):
        for cid, _ in more:
            store.get(cid)
    assert store.hot.bytes <= 64_000 and store.hot.stat()["blocks"] == 16


def test_off_by_default_for_commands(tmp_path):
    with Store(str(tmp_path / "s")) as s:
        assert s.hot is None and s.stat()["hot"] is None
