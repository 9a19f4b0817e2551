"""The block store on a real file system and a real SQLite: durability layout, verification on read,
quarantine, pins, GC, quota, verify, CAR in and out, and a full disk (a real small tmpfs)."""

import contextlib
import io
import os

import pytest

from edge.errors import DecodeError
from edge.store import Store, content
from edge.ipld.car import serialize_v2, write_car
from edge.ipld.cid import CID, DAG_PB, parse_cid
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull
from edge.store.importer import parse_chunker
from tests.store.trees import nested_tree, pattern


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_add_cat_get_round_trip(store, tmp_path):
    data = pattern(3 * 256 * 1024 + 17)
    result = content.add(store, write(tmp_path / "f", data))
    assert b"".join(content.cat(store, str(result.cid))) == data
    assert b"".join(content.cat(store, str(result.cid), 262140, 10)) == data[262140:262150]
    assert store.is_pinned(result.cid)
    tree = content.add(store, nested_tree(str(tmp_path / "tree")))
    assert content.get(store, str(tree.cid), str(tmp_path / "out")) == sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "tree") for f in fs)
    with pytest.raises(StoreError, match="already exists"):
        content.get(store, str(tree.cid), str(tmp_path / "out"))


def test_blocks_are_files_named_by_cid_and_nothing_is_left_in_tmp(store, tmp_path):
    result = content.add(store, write(tmp_path / "f", pattern(600_000)))
    files = dict(store.files.iter_files())
    assert len(files) == 4   # three leaves and the root
    assert str(result.cid) in files
    for name, path in files.items():
        with open(path, "rb") as f:
            assert parse_cid(name).matches(f.read())
    leftovers = [n for d in os.listdir(store.files.tmp_root) for n in os.listdir(os.path.join(store.files.tmp_root, d))
                 if n != ".lock"]
    assert leftovers == []


@pytest.mark.parametrize("cid", [CID.for_block(b"raw"), CID.for_block(b"pb", DAG_PB), CID.for_block(b"cbor", 0x71),
                                 CID(0, DAG_PB, CID.for_block(b"v0").multihash), CID.for_block(b"big codec", 0x0129),
                                 CID(1, 0x55, b"\x00\x03abc")])
def test_a_blocks_key_names_the_same_file_as_its_cid(store, cid):
    """The block cache and the serving path know a block by its binary CIDv1 (CID.v1_bytes): the path worked
    out from that key is the path of the CID, for every version, codec and hash."""
    assert cid.v1_bytes() == bytes(cid.to_v1())
    assert store.files.key_path(cid.v1_bytes()) == store.files.path(cid)


def test_fastcdc_chunker_round_trips(store, tmp_path):
    data = os.urandom(3 << 20)
    result = content.add(store, write(tmp_path / "f", data), chunker=parse_chunker("fastcdc-16384-65536-262144"))
    assert b"".join(content.cat(store, str(result.cid))) == data
    assert store.stat()["blocks"] > 20


def test_corrupt_block_is_detected_quarantined_never_served(store, tmp_path):
    data = pattern(700_000)
    result = content.add(store, write(tmp_path / "f", data))
    leaf = CID.for_block(data[:262144])
    path = store.files.path(leaf)
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff")
    with pytest.raises(CorruptBlock, match="corrupt") as err:
        b"".join(content.cat(store, str(result.cid)))
    assert "quarantine" in str(err.value)
    assert not os.path.exists(path)
    assert len(os.listdir(store.files.quarantine_dir)) == 1
    with pytest.raises(BlockNotFound):
        store.get(leaf)
    assert store.stat()["quarantined"] == 1
    report = store.verify()
    assert report.corrupt == [] and report.damaged_pins == [str(result.cid)]
    content.add(store, write(tmp_path / "g", data))   # adding the content again heals it
    assert store.verify().ok
    assert b"".join(content.cat(store, str(result.cid))) == data


def test_verify_finds_and_quarantines_corrupt_and_missing(store, tmp_path):
    result = content.add(store, write(tmp_path / "f", pattern(900_000)))
    names = sorted(n for n, _ in store.files.iter_files() if n != str(result.cid))
    with open(store.files.path(parse_cid(names[0])), "ab") as f:
        f.write(b"tail")
    os.unlink(store.files.path(parse_cid(names[1])))
    report = store.verify()
    assert report.corrupt == [names[0]] and report.missing == [names[1]]
    assert report.damaged_pins == [str(result.cid)] and not report.ok
    assert store.verify().corrupt == []   # quarantined, so not found again


def test_pins_gc_and_direct_pins(store, tmp_path):
    a = content.add(store, write(tmp_path / "a", pattern(600_000)))
    b = content.add(store, write(tmp_path / "b", os.urandom(300_000)), pin=False)
    assert store.gc()[0] == 3   # b's two leaves and root
    with pytest.raises(BlockNotFound):
        store.get(b.cid)
    store.unpin(a.cid)
    store.pin(a.cid, recursive=False)
    removed, freed = store.gc()
    assert removed == 3 and store.has(a.cid) and store.stat()["blocks"] == 1
    with pytest.raises(StoreError, match="not on this node"):
        store.pin(a.cid)
    with pytest.raises(StoreError, match="not pinned"):
        store.unpin(b.cid)


def test_gc_removes_files_the_catalog_does_not_list(store):
    stray = CID.for_block(b"stray")
    store.files.write_many([(stray, b"stray")])   # as if a crash came between the rename and the commit
    assert store.gc() == (1, 5)
    assert not os.path.exists(store.files.path(stray))


def test_quota_refuses_with_a_clear_message(store, tmp_path):
    content.add(store, write(tmp_path / "a", pattern(100_000)))
    store.set_quota(150_000)
    with pytest.raises(QuotaExceeded, match="quota") as err:
        content.add(store, write(tmp_path / "b", os.urandom(100_000)))
    print(err.value)
    assert "pins keep 97.7 KiB" in str(err.value) and "hearth pin rm" in str(err.value)
    assert "raise the quota with `hearth store quota SIZE`" in str(err.value)
    assert store.verify().ok and store.stat()["bytes"] == 100_000
    assert store.put_many([(CID.for_block(b"small"), b"small")]) == 5   # under the quota still fits


def _car_of(store, cid):
    out = io.BytesIO()
    content.car_export(store, cid, out)
    return out.getvalue()


def test_car_export_import_v1_and_v2(tmp_path):
    with Store(str(tmp_path / "one")) as one:
        tree = content.add(one, nested_tree(str(tmp_path / "tree")))
        raw = _car_of(one, tree.cid)
        blocks = list(content.walk_blocks(one, tree.cid))
    with Store(str(tmp_path / "two")) as two:
        result = content.car_import(two, io.BytesIO(raw))
        assert result.pinned == [str(tree.cid)] and result.blocks == len(blocks)
        assert _car_of(two, tree.cid) == raw
    with Store(str(tmp_path / "three")) as three:
        result = content.car_import(three, io.BytesIO(serialize_v2([tree.cid], blocks)))
        assert result.pinned == [str(tree.cid)]
        content.get(three, str(tree.cid), str(tmp_path / "out"))
    assert open(tmp_path / "out" / "sub" / "b.bin", "rb").read() == pattern(300 * 1024)


def test_car_with_a_lying_block_is_refused_and_stores_nothing_from_it(store):
    good = b"good block"
    out = io.BytesIO()
    write_car(out, [CID.for_block(good)], [(CID.for_block(good), b"evil block")])
    with pytest.raises(DecodeError, match="does not match its CID"):
        content.car_import(store, io.BytesIO(out.getvalue()))
    assert store.stat()["blocks"] == 0 and store.pins() == []


def test_car_with_missing_blocks_is_not_pinned(store, tmp_path):
    with Store(str(tmp_path / "src")) as src:
        tree = content.add(src, nested_tree(str(tmp_path / "tree")))
        blocks = list(content.walk_blocks(src, tree.cid))
    out = io.BytesIO()
    write_car(out, [tree.cid], blocks[:-1])
    result = content.car_import(store, io.BytesIO(out.getvalue()))
    assert result.incomplete == [str(tree.cid)] and result.pinned == []


def test_foreign_dag_with_unsafe_names_is_not_exported(store, tmp_path):
    from edge.ipld.dagpb import PBLink, PBNode, serialize_pbnode
    from edge.store.importer import DIR_NODE
    leaf = CID.for_block(b"x")
    evil = serialize_pbnode(PBNode(DIR_NODE, (PBLink(leaf, "../escape", 1),)))
    cid = CID.for_block(evil, DAG_PB)
    store.put_many([(leaf, b"x"), (cid, evil)], verify=True)
    with pytest.raises(DecodeError, match="not a safe file name"):
        content.get(store, str(cid), str(tmp_path / "out"))
    assert not (tmp_path / "escape").exists()


def test_reopen_keeps_everything(tmp_path):
    with Store(str(tmp_path / "s")) as s:
        r = content.add(s, write(tmp_path / "f", pattern(500_000)))
    with Store(str(tmp_path / "s")) as s:
        assert b"".join(content.cat(s, str(r.cid))) == pattern(500_000)
        assert s.verify().ok


def test_a_damaged_catalog_gives_a_clear_error(tmp_path):
    root = tmp_path / "s"
    Store(str(root)).close()
    with open(root / "store.db", "wb") as f:
        f.write(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot be opened"):
        Store(str(root))


def test_full_disk_gives_a_clear_error_and_loses_nothing(small_disk, tmp_path):
    with Store(str(small_disk / "store")) as s:
        kept = content.add(s, write(tmp_path / "small", pattern(1 << 20)))
        with pytest.raises(StoreFull, match="full") as err:
            content.add(s, write(tmp_path / "big", os.urandom(12 << 20)))
        assert "nothing stored was lost" in str(err.value)
        assert not s.is_pinned(CID.for_block(b""))   # nothing acknowledged for the failed add
        report = s.verify()
        assert report.ok and report.corrupt == []
        assert b"".join(content.cat(s, str(kept.cid))) == pattern(1 << 20)
        assert [p["cid"] for p in s.pins()] == [str(kept.cid)]
        s.gc()   # the failed add's blocks go; space comes back
        leftovers = [n for d in os.listdir(s.files.tmp_root)
                     for n in os.listdir(os.path.join(s.files.tmp_root, d)) if n != ".lock"]
        assert leftovers == []
        again = content.add(s, write(tmp_path / "small2", pattern(2 << 20)))
        assert b"".join(content.cat(s, str(again.cid))) == pattern(2 << 20)


def test_a_catalog_write_on_a_full_disk_says_the_disk_is_full(small_disk, tmp_path):
    """SQLite rolls a transaction back itself when the disk is full: the store must still say StoreFull (it
    said "cannot rollback - no transaction is active", which the gateway answered with a 500)."""
    with Store(str(small_disk / "store")) as s:
        kept = content.add(s, write(tmp_path / "small", pattern(1 << 20)))
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        with pytest.raises(StoreFull, match="full"):
            s.set_name("big", kept.cid, "file", {"pad": "x" * 200_000})   # a catalog write only
        os.unlink(filler)
        s.set_name("big", kept.cid, "file", {"pad": "x" * 200_000})
        assert s.name("big")["meta"]["pad"] == "x" * 200_000 and s.verify().ok


def test_a_batch_larger_than_the_open_file_limit_is_stored(store):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(200, hard), hard))
    try:
        blocks = [(CID.for_block(b"%d" % i), b"%d" % i) for i in range(1000)]   # five times the limit
        assert store.put_many(blocks) == sum(len(d) for _, d in blocks)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert store.stat()["blocks"] == 1000 and store.verify().ok


def _fill(disk):
    """Fill the disk to its last byte with one file; returns its path."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
    return filler


def test_a_store_opens_and_reads_on_a_full_disk(small_disk, tmp_path):
    """Opening a store whose catalog is current writes nothing: with the disk full (another process filled it,
    the agent still running) `hearth cat` still reads (it said "the catalog could not record the change")."""
    with Store(str(small_disk / "store")) as agent:   # the running agent keeps its catalog open
        kept = content.add(agent, write(tmp_path / "small", pattern(1 << 20)))
        filler = _fill(small_disk)
        with Store(str(small_disk / "store")) as reader:   # what `hearth cat` opens
            assert b"".join(content.cat(reader, str(kept.cid))) == pattern(1 << 20)
            assert reader.is_pinned(kept.cid)
        os.unlink(filler)


def test_a_closed_store_on_a_full_disk_says_free_space(small_disk, tmp_path):
    """With no agent running, SQLite cannot even create the shared-memory file a WAL reader needs on a full disk:
    the store says to free space, and once there is room it reads everything again."""
    with Store(str(small_disk / "store")) as s:
        kept = content.add(s, write(tmp_path / "small", pattern(1 << 20)))
    filler = _fill(small_disk)
    with pytest.raises(StoreError, match="if the disk is full, free space"):
        Store(str(small_disk / "store"))
    os.unlink(filler)
    with Store(str(small_disk / "store")) as reader:
        assert b"".join(content.cat(reader, str(kept.cid))) == pattern(1 << 20) and reader.verify().ok


def test_a_catalog_from_before_the_cache_tables_gets_them_and_keeps_its_version(tmp_path):
    """A store made by a Hearth without the access and holds tables (same catalog version) gains them on open,
    keeps its blocks, and keeps version 1 (so the other A/B slot's older Hearth still opens it)."""
    import sqlite3
    from edge.store.catalog import SCHEMA_VERSION
    with Store(str(tmp_path)) as store:
        cid = content.add_bytes(store, b"old block", pin_name="old").cid
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute("DROP TABLE access")
    db.execute("DROP TABLE holds")
    db.commit()
    db.close()
    with Store(str(tmp_path)) as store:
        assert b"".join(content.cat(store, str(cid))) == b"old block"
        tables = {r[0] for r in store.catalog.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"access", "holds"} <= tables
        assert store.catalog.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1


@pytest.mark.parametrize("size", [0, 1000, (20 << 20) + 12345])   # empty, one short leaf, three batches
def test_only_hash_names_what_add_stores_without_keeping_the_bytes(store, tmp_path, size):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))
    seen = []
    hashed = content.hash_only(str(path), progress=seen.append)
    added = content.add(store, str(path))
    assert hashed == added and sum(seen) == size
    tree = tmp_path / "tree"
    nested_tree(tree)
    assert content.hash_only(str(tree)) == content.add(store, str(tree))
