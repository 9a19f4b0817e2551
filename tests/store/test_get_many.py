"""Store.get_many (the batch read the transport serves GetMany from) gives, block for block, what get gives:
the bytes, or the error get would raise, with the same quarantine and catalog repairs; on a real store."""

import os

import pytest

from edge.store import Store
from edge.ipld.cid import CID, IDENTITY
from edge.store.errors import BlockNotFound, CorruptBlock


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "s")) as s:
        yield s


def put(store, *datas):
    blocks = [(CID.for_block(d), d) for d in datas]
    store.put_many(blocks)
    return [c for c, _ in blocks]


def test_good_blocks_in_order_with_identity_and_dag_pb(store):
    datas = [os.urandom(n) for n in (0, 1, 1024, 300_000)]
    cids = put(store, *datas)
    node = b"\x0a\x02\x08\x01"   # a dag-pb node (an empty UnixFS directory)
    pb = CID.for_block(node, 0x70)
    store.put(pb, node)
    ident = CID(1, 0x55, bytes([IDENTITY, 5]) + b"hello")
    assert store.get_many(cids + [ident, pb, cids[0]]) == datas + [b"hello", node, datas[0]]


def test_each_failure_is_what_get_would_raise_and_repairs_the_catalog(store):
    good, gone, rotten = put(store, b"good", b"file removed", b"file rots")
    os.remove(store.files.path(gone))
    with open(store.files.path(rotten), "wb") as f:
        f.write(b"rot")
    never = CID.for_block(b"never stored")
    got = store.get_many([never, gone, good, rotten])
    assert isinstance(got[0], BlockNotFound) and got[0].cid == never
    assert isinstance(got[1], CorruptBlock) and "its file is gone" in str(got[1])
    assert got[2] == b"good"
    assert isinstance(got[3], CorruptBlock) and "moved to" in str(got[3])
    assert not store.has(gone) and not store.has(rotten) and store.has(good)
    assert store.verify().ok   # what stays listed is whole
    # and get agrees now that both are struck
    for cid in (gone, rotten):
        with pytest.raises(BlockNotFound):
            store.get(cid)


def test_an_unreadable_file_is_handed_back_as_its_os_error(store):
    good, odd = put(store, b"good", b"odd")
    path = store.files.path(odd)
    os.remove(path)
    os.mkdir(path)   # what a failing card's file system can leave: something that cannot be read as a file
    got = store.get_many([odd, good])
    assert isinstance(got[0], IsADirectoryError) and got[1] == b"good"


def test_hash_other_than_sha256_is_refused_as_get_refuses_it(store):
    blake = CID(1, 0x55, b"\xa0\xe4\x02\x20" + bytes(32))   # blake2b-256: not a hash this node reads
    got = store.get_many([blake])
    with pytest.raises(Exception) as raised:
        store.get(blake)
    assert type(got[0]) is type(raised.value) and str(got[0]) == str(raised.value)


def test_the_block_cache_serves_what_it_holds_and_learns_from_batches(tmp_path):
    with Store(str(tmp_path / "s"), hot_bytes=1 << 20) as store:
        cids = put(store, *[os.urandom(1000) for _ in range(4)])
        first = store.get_many(cids)
        assert store.get_many(cids) == first            # the second read admits them
        assert store.stat()["hot"]["blocks"] == 4
        hits = store.stat()["hot"]["hits"]
        assert store.get_many(cids) == first
        assert store.stat()["hot"]["hits"] == hits + 4
        os.remove(store.files.path(cids[0]))           # a cached block whose file goes is not served from memory
        assert isinstance(store.get_many(cids[:1])[0], CorruptBlock)
