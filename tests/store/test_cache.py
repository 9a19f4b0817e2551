"""One quota for the CLI and the agent, and the cache that makes room under it: unpinned blocks go least recently
used first, never a pinned one nor one a write or fetch in progress holds; access times written in batches; the
disk reserve on a real small tmpfs. (Two real agents where one fetches more than its quota from the other:
tests/agent/test_gateway_fetch.py.)"""

import json
import os
import subprocess
import sys

import pytest

from edge.store import Store, content
from edge.ipld.cid import CID
from edge.store.errors import BlockNotFound, QuotaExceeded, StoreFull
from tests.store.helpers import hearth_cli, writer_trace
from tests.store.trees import pattern

K = 100_000


def block(i: int, size: int = K) -> tuple:
    data = i.to_bytes(4, "big") * (size // 4)
    return CID.for_block(data), data


def write(path, data):
    path.write_bytes(data)
    return str(path)


# the one quota -------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    return hearth_cli(tmp_path / "node")


def test_one_quota_config_wins_and_every_command_enforces_it(cli, tmp_path):
    node = tmp_path / "node"
    assert "quota:       none" in cli("store", "stat").output
    cli("store", "quota", "3M")
    assert "3,000,000 bytes (2.9 MiB), from `hearth store quota`" in cli("store", "quota").output
    stat = json.loads(cli("store", "stat", "--json").output)
    assert (stat["quota"], stat["quota_from"]) == (3_000_000, "`hearth store quota`")

    # hearth.toml sets one: it wins, and `hearth store quota SIZE` says so plainly
    (node / "hearth.toml").write_text('quota = "1500K"\n')
    shown = cli("store", "quota").output
    assert f"1,500,000 bytes (1.4 MiB), from {node / 'hearth.toml'}" in shown
    told = cli("store", "quota", "5M").output
    print(told)
    assert "quota set to 5,000,000" in told and f"`quota` in {node / 'hearth.toml'} (1,500,000 bytes) overrides" in told
    # HEARTH_QUOTA over the file, as for every setting
    assert "from environment HEARTH_QUOTA" in cli("store", "stat", env={"HEARTH_QUOTA": "1M"}).output

    # add, car import and pin all work under the quota in force (hearth.toml's 1.5 MB), not the catalog's 5 MB
    small = write(tmp_path / "small", pattern(1_000_000))
    cid = cli("add", "-q", small).output.strip()
    big = write(tmp_path / "big", os.urandom(1_000_000))
    refused = cli("add", big, ok=False)
    print(refused.output)
    assert refused.exit_code == 1
    assert "quota of 1.4 MiB" in refused.output and f"raise `quota` in {node / 'hearth.toml'}" in refused.output
    assert "is full: pins keep 976.8 KiB" in refused.output and "hearth pin rm CID" in refused.output

    other = tmp_path / "other"
    with Store(str(other)) as s:
        car_cid = content.add(s, big).cid
        with open(tmp_path / "big.car", "wb") as f:
            content.car_export(s, car_cid, f)
    refused = cli("car", "import", str(tmp_path / "big.car"), ok=False)
    assert refused.exit_code == 1 and "quota" in refused.output and "hearth pin rm" in refused.output
    # with the file's quota gone, the catalog's 5 MB is in force again: the same import fits
    (node / "hearth.toml").write_text("")
    assert "imported" in cli("car", "import", str(tmp_path / "big.car")).output
    cli("pin", "add", cid)
    stat = json.loads(cli("store", "stat", "--json").output)
    assert stat["quota"] == 5_000_000 and stat["pinned_bytes"] == stat["bytes"] >= 2_000_000
    assert stat["cached_bytes"] == 0


def test_the_agent_and_the_cli_build_the_same_store_settings(tmp_path):
    from edge.config import load_config, store_settings
    (tmp_path / "hearth.toml").write_text('quota = "200G"\ndisk_reserve = "2GiB"\n')
    config = load_config(flags={"data_dir": str(tmp_path)}, env={})
    assert store_settings(config, env={}) == {"quota": 200 * 10**9, "quota_source": str(tmp_path / "hearth.toml"),
                                              "reserve": 2 << 30}
    assert store_settings(load_config(flags={"data_dir": str(tmp_path / "none")}, env={}), env={}) == {
        "quota": None, "quota_source": str(tmp_path / "none" / "hearth.toml"), "reserve": None}


# the cache makes room ------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store"), reserve=0) as s:
        yield s


def test_least_recently_used_unpinned_blocks_go_first_never_pinned_ones(store):
    pinned = block(0)
    store.put_many([pinned])
    store.pin(pinned[0], recursive=False)
    a, b, c, d = (block(i) for i in range(1, 5))
    for blk in (a, b, c, d):
        store.put_many([blk])            # fetched for a viewer: unpinned, a cache
    store.get(a[0])
    store.get_many([c[0]])              # a and c were read since: b and d are the least recently used
    store.set_quota(5 * K)
    e = block(5)
    store.put_many([e])                  # needs 100 kB: b first, then d (the slack, a 16th of the quota)
    held = {name: store.has(blk[0]) for name, blk in zip("pabcde", (pinned, a, b, c, d, e))}
    print(held, store.evicted)
    assert held == {"p": True, "a": True, "b": False, "c": True, "d": False, "e": True}
    assert not os.path.exists(store.files.path(b[0])) and not os.path.exists(store.files.path(d[0]))
    with pytest.raises(BlockNotFound):
        store.get(b[0])
    assert store.used() <= 5 * K and store.verify().ok
    stat = store.stat(usage=True)
    assert (stat["pinned_bytes"], stat["cached_bytes"]) == (K, 3 * K)
    # a pin's whole DAG is kept: a recursive pin on a file keeps its leaves though none was read
    f = content.add_bytes(store, pattern(300_000), pin_name=None)   # unpinned: evictable
    store.set_quota(None)
    g = content.add_bytes(store, os.urandom(600_000), pin_name="g")
    store.set_quota(store.used())
    content.add_bytes(store, os.urandom(250_000))                   # makes room from the oldest: a, c, e, f
    assert store.dag(g.cid)[1] == [] and store.has(pinned[0])
    assert not any(store.has(blk[0]) for blk in (a, c, e))
    assert not store.has(f.cid) or store.dag(f.cid)[1] and store.verify().ok


def test_blocks_a_fetch_or_write_holds_are_never_evicted(store, tmp_path):
    f = content.add_bytes(store, os.urandom(500_000))   # cached: a root and two leaves
    x = block(7)
    store.put_many([x])
    store.set_quota(store.used())
    with store.protect(f.cid):                          # a fetch of f is under way
        content.add_bytes(store, os.urandom(100_000))   # room comes from x, not f's DAG though f is older
        assert not store.has(x[0]) and store.dag(f.cid)[1] == []
        with pytest.raises(QuotaExceeded) as err:
            content.add_bytes(store, os.urandom(100_000))
        print(err.value)
        assert "writes or fetches in progress hold" in str(err.value)
    assert store.dag(f.cid)[1] == []
    # a write in progress (shared(), as add and imports use): what it added meanwhile stays
    with store.shared():
        y = block(8)
        store.put_many([y])                              # room comes from f, no longer held
        with pytest.raises(QuotaExceeded):
            store.put_many([block(9, 800_000)])          # more than all that is not held: y is not evicted
        assert store.has(y[0])
    content.add_bytes(store, os.urandom(100_000))       # the hold is over: now the cache makes room again
    assert store.verify().ok


def test_a_hold_in_another_process_protects_its_blocks(tmp_path):
    root = str(tmp_path / "store")
    with Store(root, reserve=0) as s:
        cached = block(1)
        s.put_many([cached])
        s.set_quota(s.used())
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time\n"
             "from edge.store import Store\n"
             "from tests.store.test_cache import block\n"
             f"s = Store({root!r}, reserve=0)\n"
             "with s.protect(block(1)[0]):\n"
             "    s.flush_access()\n"
             "    print('held', flush=True)\n"
             "    sys.stdin.readline()\n"
             "s.close()\n"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
        try:
            assert child.stdout.readline().strip() == "held"
            with pytest.raises(QuotaExceeded):
                s.put_many([block(2)])
            assert s.has(cached[0])
        finally:
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(timeout=30)
        s.put_many([block(2)])          # the other process let go: the cached block makes room
        assert not s.has(cached[0])


def test_refused_only_when_pins_fill_the_quota_and_then_nothing_is_evicted(store):
    p = content.add_bytes(store, os.urandom(400_000), pin_name="keep")
    cached = block(3, 50_000)
    store.put_many([cached])
    store.set_quota(500_000)
    with pytest.raises(QuotaExceeded) as err:
        content.add_bytes(store, os.urandom(200_000))
    print(err.value)
    assert "pins keep" in str(err.value) and "hearth pin rm CID" in str(err.value)
    assert "hearth gc" not in str(err.value)
    assert store.has(cached[0]) and store.dag(p.cid)[1] == []   # nothing evicted for a write that cannot fit


def test_an_eviction_cut_between_its_two_steps_leaves_only_unlisted_files(store, monkeypatch):
    for i in range(4):
        store.put_many([block(i)])
    store.set_quota(4 * K)

    def crash(keys):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(store, "_unlink_evicted", crash)
    with pytest.raises(KeyboardInterrupt):
        store.put_many([block(9)])
    monkeypatch.undo()
    report = store.verify()
    assert report.ok and report.orphans >= 1     # the catalog names no block whose file is gone
    removed, _ = store.gc()
    assert removed >= report.orphans


def test_access_times_are_written_in_batches_never_one_write_per_read(tmp_path):
    root = str(tmp_path / "store")
    with Store(root, reserve=0) as s:
        blocks = [block(i, 64) for i in range(2000)]
        s.put_many(blocks)
    s = Store(root, reserve=0, access_batch=500, access_seconds=3600)
    reads = 0
    with writer_trace(s, "BEGIN") as writes:
        for rnd in range(3):
            for i in range(0, 2000, 10):
                s.get_many([cid for cid, _ in blocks[i:i + 10]])
                reads += 10
            for cid, _ in blocks[::4]:
                s.get(cid)
                reads += 1
        s.close()
    print(f"{reads} reads, {len(writes)} write transactions")
    assert 1 <= len(writes) <= reads // 500 + 2
    with Store(root, reserve=0) as s:
        at = dict(s.catalog.rows("SELECT cid, at FROM access"))
    assert len(at) == 2000   # every block read has its time, written at the latest at close



def test_a_block_read_again_within_the_coarse_window_costs_no_second_write(tmp_path):
    """relatime: a block whose access time was written is not written again until the window (two at most) has
    passed; then it is, so the LRU still sees blocks that stay in use."""
    from edge.store import cache
    root = str(tmp_path / "store")
    with Store(root, reserve=0) as s:
        x = block(1, 64)
        s.put_many([x])
        s.get(x[0])
        s.flush_access()
        first = s.catalog.row("SELECT at FROM access")[0]
        s.get(x[0])
        s.flush_access()
        assert s.catalog.row("SELECT at FROM access")[0] == first   # within the window: not written again
        s.memo.recent_since -= 2 * cache.ACCESS_COARSE               # two windows later (as the clock would)
        s.get(x[0])
        s.get(x[0])
        s.flush_access()
        assert s.catalog.row("SELECT at FROM access")[0] > first


def test_a_block_gone_before_its_access_time_is_written_leaves_a_row_nothing_reads_and_gc_removes(tmp_path):
    """Access times are written without asking whether each block is still listed (that lookup was a third of
    their cost). A block collected between its read and the write leaves a row that neither the LRU nor the
    quota sees; the next gc removes it, and the blocks still listed keep theirs."""
    root = str(tmp_path / "store")
    with Store(root, reserve=0, access_seconds=3600) as s:
        kept, gone = block(1, 64), block(2, 64)
        s.put_many([kept, gone])
        s.pin(kept[0])
        s.get_many([kept[0], gone[0]])     # both reads remembered in memory, not yet written
        assert s.gc() == (1, 64)           # the unpinned one is collected before its time is written
        s.flush_access()
        assert {c for c, in s.catalog.rows("SELECT cid FROM access")} == {str(kept[0]), str(gone[0])}
        assert s.has(kept[0]) and not s.has(gone[0])
        s.gc()
        assert [c for c, in s.catalog.rows("SELECT cid FROM access")] == [str(kept[0])]


# the disk reserve on a real small disk -------------------------------------------------------------------------


def test_the_disk_reserve_makes_room_then_refuses(small_disk, tmp_path):
    with Store(str(small_disk / "auto")) as s:
        assert s.reserve == int(8 * 1024 * 1024 * 0.05)   # the smaller of 1 GiB and 5% of the disk
    with Store(str(small_disk / "store"), reserve=3 << 20) as s:
        cached = content.add_bytes(s, os.urandom(3 << 20))               # a viewer's fetch: unpinned
        kept = content.add(s, write(tmp_path / "a", os.urandom(2 << 20)))   # needs room: the cache goes
        print(s.stat(usage=True))
        assert not s.has(cached.cid) and s.dag(kept.cid)[1] == [] and s.disk_free() >= 3 << 20
        with pytest.raises(StoreFull) as err:
            content.add(s, write(tmp_path / "b", os.urandom(3 << 20)))
        print(err.value)
        assert "disk_reserve" in str(err.value) and "nothing stored was lost" in str(err.value)
        assert s.verify().ok and s.dag(kept.cid)[1] == []


def test_a_writer_that_races_an_eviction_lists_only_blocks_whose_files_are_there(tmp_path):
    """Eviction in one store (say the agent's) unlinks a block's file just as another writer (say `hearth add`)
    writes the same block again: the writer sees the evictions counter move and re-writes the file before it
    lists the block, so the catalog never names a block whose file is gone."""
    root = str(tmp_path / "store")
    x, y = block(1), block(2)
    with Store(root, reserve=0, quota=K) as agent, Store(root, reserve=0) as cli:
        agent.put_many([x])
        deferred = []
        real_unlink = agent._unlink_evicted
        agent._unlink_evicted = deferred.extend          # eviction's first step only, for now
        agent.put_many([y])                              # x's row is gone; its file is still there
        assert not agent.has(x[0]) and os.path.exists(agent.files.path(x[0]))
        real_write = cli.files.write_many

        def write_then_evictions_second_step(blocks):
            cli.files.write_many = real_write
            real_write(blocks)
            real_unlink(deferred)                        # unlinks x's new file: no row lists it yet
        cli.files.write_many = write_then_evictions_second_step
        cli.put_many([x])
        assert cli.has(x[0]) and os.path.exists(cli.files.path(x[0]))
        assert cli.get(x[0]) == x[1] and cli.verify().ok


def test_a_block_stored_between_a_reads_miss_and_its_check_is_served_not_struck(tmp_path, monkeypatch):
    """A reader misses a block's file just as a fetch brings it back (evicted, then wanted again): the block
    is listed by the time the reader asks the catalog. It is served, not struck from the catalog as missing."""
    root = str(tmp_path / "store")
    x, y = block(5), block(6)
    with Store(root, reserve=0) as reader, Store(root, reserve=0) as fetcher:
        real_read = reader.files.read_path

        def miss_while_the_fetch_stores_it(path):
            reader.files.read_path = real_read
            fetcher.put_many([x])      # the fetch lists it after its file is whole
            return None                # ... but this read came just before
        reader.files.read_path = miss_while_the_fetch_stores_it
        assert reader.get(x[0]) == x[1]

        def native_miss_while_the_fetch_stores_it(keys):
            monkeypatch.undo()
            fetcher.put_many([y])
            return [None]
        monkeypatch.setattr(reader.files, "read_many", native_miss_while_the_fetch_stores_it)
        assert reader.get_many([y[0]]) == [y[1]]
        assert reader.has(x[0]) and reader.has(y[0]) and reader.verify().ok
