"""Fetching a DAG from neighbours (edge/fetch.py) over real ZeroMQ + CURVE servers on loopback, real stores:
the best holder is asked first, a neighbour that lies or says BUSY is handled, and every block is checked."""

import os

import pytest
import trio

from edge.errors import EdgeError
from edge.fetch import Fetch, _Level, _Puller
from edge.identity import Identity
from edge.store import Store, content
from edge.store.service import AsyncStore
from edge.ipld.cid import RAW
from edge.ipld.dagpb import parse_pbnode
from edge.transport.client import open_client
from edge.ratelimit import ByteRate
from edge.transport.server import Policy, serve_transport

DATA = os.urandom(3 * 1024 * 1024 + 12345)   # 13 leaves and a root


@pytest.fixture
def stores(tmp_path):
    made = []

    def make(name, with_content):
        store = Store(str(tmp_path / name))
        made.append(store)
        root = None
        if with_content:
            path = tmp_path / "input"
            path.write_bytes(DATA)
            root = content.add(store, str(path)).cid
        return store, root
    yield make
    for store in made:
        store.close()


async def fetch(nursery, target, sources, scores):
    """Fetch with clients to each (store, policy) in sources; returns (Fetch, counters)."""
    me = Identity.generate()
    clients = {}
    for name, (store, policy) in sources.items():
        ident = Identity.generate()
        endpoint = (await nursery.start(serve_transport, store, ident, policy, "tcp://127.0.0.1:0")).endpoint
        clients[name] = await nursery.start(_client, me, endpoint, ident.node_id)
    counters = {"blocks": 0, "bytes": 0, "failures": 0}
    return Fetch(AsyncStore(target), clients, scores, counters), counters


async def _client(me, endpoint, node, *, task_status):
    async with open_client(me, endpoint, node) as client:
        task_status.started(client)
        await trio.sleep_forever()


def liar(store):
    """The store of a neighbour whose leaves have gone bad and who serves them anyway."""
    real, real_many = store.get, store.get_many
    store.get = lambda cid: b"\0" * len(real(cid)) if cid.codec == RAW else real(cid)
    store.get_many = lambda cids: [b"\0" * len(got) if cid.codec == RAW and isinstance(got, bytes) else got
                                   for cid, got in zip(cids, real_many(cids))]   # what GetMany is served from
    return store


@pytest.mark.trio
async def test_a_lying_best_neighbour_loses_its_share_to_an_honest_one(stores, tmp_path):
    (bad, root), (good, _), (target, _) = stores("bad", True), stores("good", True), stores("target", False)
    async with trio.open_nursery() as nursery:
        f, counters = await fetch(nursery, target, {"bad": (liar(bad), Policy()), "good": (good, Policy())},
                                  {"bad": 0.9, "good": 0.5})
        assert await f.dag(root) == 14
        assert counters["blocks"] == 14 and counters["failures"] >= 1
        nursery.cancel_scope.cancel()
    content.get(target, str(root), str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == DATA
    assert target.verify().ok


@pytest.mark.trio
async def test_when_every_holder_lies_the_fetch_fails_and_stores_no_bad_block(stores):
    (bad, root), (target, _) = stores("bad", True), stores("target", False)
    async with trio.open_nursery() as nursery:
        f, counters = await fetch(nursery, target, {"bad": (liar(bad), Policy())}, {})
        with pytest.raises(EdgeError, match="no neighbour could give"):
            await f.dag(root)
        assert counters["failures"] >= 1
        nursery.cancel_scope.cancel()
    report = target.verify()
    assert report.ok and report.corrupt == []


@pytest.mark.trio
async def test_a_busy_neighbour_is_waited_for_not_given_up(stores):
    (slow, root), (target, _) = stores("slow", True), stores("target", False)
    async with trio.open_nursery() as nursery:
        f, counters = await fetch(nursery, target, {"slow": (slow, Policy(rate=20, burst=4))}, {})
        assert await f.dag(root) == 14
        assert counters["failures"] == 0
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_blocks_already_here_are_not_fetched_and_no_holder_is_an_error(stores):
    (src, root), (target, _) = stores("src", True), stores("target", False)
    async with trio.open_nursery() as nursery:
        f, _ = await fetch(nursery, target, {"src": (src, Policy())}, {})
        assert await f.dag(root) == 14
        assert await f.dag(root) == 14   # a second time: nothing new (the count is per Fetch)
        empty, _ = stores("empty", False)
        g, _ = await fetch(nursery, stores("other", False)[0], {"empty": (empty, Policy())}, {})
        with pytest.raises(EdgeError, match="no neighbour holds"):
            await g.dag(root)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_fetch_past_the_quota_stops_with_a_clear_error_and_a_consistent_store(stores, tmp_path):
    from edge.store.errors import QuotaExceeded
    (src, root), _ = stores("src", True), None
    target = Store(str(tmp_path / "small"), quota=1 << 20)   # 1 MiB for 3 MiB of content
    try:
        async with trio.open_nursery() as nursery:
            f, counters = await fetch(nursery, target, {"src": (src, Policy())}, {})
            with pytest.raises(QuotaExceeded, match="quota"):
                await f.dag(root)
            nursery.cancel_scope.cancel()
        report = target.verify()
        assert report.ok and report.corrupt == [] and counters["blocks"] == report.checked
    finally:
        target.close()


def test_the_level_queue_goes_on_from_the_wanted_place_and_keeps_what_is_in_flight():
    cids = [f"c{i}" for i in range(8)]
    level = _Level({c: ["a"] for c in cids})
    puller = _Puller(level, "a")
    assert [next(puller), next(puller)] == ["c0", "c1"]           # in flight
    level.go_on_from("c5")
    assert next(puller) == "c5"
    level.go_on_from("c3")                                         # a second reader, earlier in the file
    assert list(level.todo) == ["c3", "c4", "c6", "c7", "c2"]
    assert puller.arrived() == "c0"
    puller.give_back()                                             # BUSY: the ones in flight go first again
    assert list(puller) == ["c1", "c5", "c3", "c4", "c6", "c7", "c2"]
    level.go_on_from("c4")                                         # nothing left to move
    assert not level.todo


def test_each_holder_takes_only_what_it_holds_and_a_failure_is_not_asked_again():
    level = _Level({"c0": ["a", "b"], "c1": ["b"], "c2": ["a", "b"]})
    a, b = _Puller(level, "a"), _Puller(level, "b")
    assert next(a) == "c0" and next(a) == "c2"
    with pytest.raises(StopIteration):
        next(a)                                                    # c1 is only b's
    a.give_back(failed=True)                                       # a lied about c0
    assert list(level.todo) == ["c0", "c2", "c1"] and level.holders["c0"] == {"b"}
    assert list(_Puller(level, "a")) == ["c2"]
    assert list(b) == ["c0", "c1"]


@pytest.mark.trio
async def test_a_wanted_block_comes_first_and_every_block_comes_once(stores, tmp_path):
    """A reader that seeks (want) moves the fetch: the wanted leaf and those after it are stored first, the
    skipped ones after them, none twice."""
    (source, root), (target, _) = stores("source", True), stores("target", False)
    leaves = [link.cid for link in parse_pbnode(source.get(root)).links]
    stored = []
    put_many = target.put_many

    def recording(blocks, **kw):
        stored.extend(cid for cid, _ in blocks)
        return put_many(blocks, **kw)
    target.put_many = recording
    async with trio.open_nursery() as nursery:
        f, counters = await fetch(nursery, target, {"a": (source, Policy())}, {"a": 1.0})
        f.want(leaves[10])            # before the leaves' level: applied when the fetch reaches it
        assert await f.dag(root) == 14
        nursery.cancel_scope.cancel()
    assert stored == [root, *leaves[10:], *leaves[:10]]
    content.get(target, str(root), str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == DATA


@pytest.mark.trio
async def test_every_holder_gives_a_part_at_once(stores, tmp_path):
    """Two neighbours on slow uplinks (1 MB/s each): both are pulled from at once, the better-scored one first,
    each block fetched once and checked."""
    (a, root), (b, _), (target, _) = stores("a", True), stores("b", True), stores("target", False)
    async with trio.open_nursery() as nursery:
        f, counters = await fetch(nursery, target, {"a": (a, Policy(upload=ByteRate(1_000_000))),
                                                    "b": (b, Policy(upload=ByteRate(1_000_000)))},
                                  {"a": 0.9, "b": 0.5})
        assert await f.dag(root) == 14
        nursery.cancel_scope.cancel()
    assert f.served_by["a"] >= 3 and f.served_by["b"] >= 3, f.served_by
    assert f.served_by["a"] + f.served_by["b"] == 14 and counters["failures"] == 0
    assert sum(f.rates[n][0] for n in "ab") == len(DATA) + len(target.get(root))   # throughput samples
    assert all(f.rates[n][1] > 0 for n in "ab")
    content.get(target, str(root), str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == DATA


@pytest.mark.trio
async def test_a_slow_disk_gets_few_large_writes_and_memory_stays_bounded(stores, tmp_path, monkeypatch):
    """Many small blocks, a disk that takes 50 ms a durable write: the writer takes whatever arrived while it
    was busy (a few writes, not one per handful), and no write holds more than STORE_BYTES and one block."""
    import time

    from edge import fetch as fetch_mod
    monkeypatch.setattr(fetch_mod, "STORE_BYTES", 64_000)
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(300):
        (tree / f"f{i}").write_bytes(os.urandom(500 + i))
    (source, _), (target, _) = stores("source", False), stores("target", False)
    root = content.add(source, str(tree)).cid
    writes = []
    real = target.put_many

    def slow(blocks, **kw):
        writes.append(sum(len(d) for _, d in blocks))
        time.sleep(0.05)
        return real(blocks, **kw)
    target.put_many = slow
    async with trio.open_nursery() as nursery:
        f, _ = await fetch(nursery, target, {"s": (source, Policy())}, {"s": 1.0})
        assert await f.dag(root) == 301
        nursery.cancel_scope.cancel()
    # the root, then its 300 leaves: the first alone (the disk was free), the rest as they piled up (one write
    # per 32 blocks would be 10 for the leaves)
    assert len(writes) <= 6 and max(writes) <= 64_000 + 800
    assert target.verify().ok
