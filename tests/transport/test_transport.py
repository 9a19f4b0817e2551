"""The ZeroMQ transport on real sockets (loopback TCP), real CURVE and a real store on disk."""

import functools
import os
import time
from contextlib import asynccontextmanager

import pytest
import trio
import zmq

from edge.fleet.certificates import sign_certificate
from edge.identity import Identity
from edge.store import Store, content
from edge.ipld.cid import CID
from edge.transport.client import PeerRefused, TransportError, open_client
from edge.transport.server import Policy, serve_transport
from edge.transport.zmqtrio import TrioSocket
from edge.wire import Error, ErrorCode, Get, Hello, Welcome, parse_message, serialize_message
from tests.clock import ManualClock, until

from tests.transport.helpers import raw_dealer


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "a")) as s:
        yield s


async def start(nursery, store, identity, policy=None, clock=time.monotonic):
    server = await nursery.start(functools.partial(serve_transport, store, identity, policy or Policy(),
                                                   "tcp://127.0.0.1:0", clock=clock))
    return server, server.endpoint


@pytest.mark.trio
async def test_get_have_and_put_policy(store, tmp_path):
    data = os.urandom(700_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    root = content.add(store, str(path)).cid
    leaf = CID.for_block(data[:262144])
    server_id, client_id, writer_id = Identity.generate(), Identity.generate(), Identity.generate()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id, Policy(write_allow=frozenset({writer_id.node_id})))
        async with open_client(client_id, endpoint, server_id.node_id) as c:
            assert c.welcome.node == server_id.node_id
            assert await c.get(leaf) == data[:262144]
            assert await c.have([root, leaf, CID.for_block(b"absent")]) == (True, True, False)
            with pytest.raises(PeerRefused) as err:
                await c.get(CID.for_block(b"absent"))
            assert err.value.code == ErrorCode.NOT_FOUND
            with pytest.raises(PeerRefused) as err:
                await c.put(CID.for_block(b"new"), b"new")
            assert err.value.code == ErrorCode.REFUSED
        async with open_client(writer_id, endpoint, server_id.node_id) as w:
            assert await w.put(CID.for_block(b"new"), b"new") is True
            with pytest.raises(PeerRefused) as err:
                await w.put(CID.for_block(b"honest"), b"lying")
            assert err.value.code == ErrorCode.BAD_REQUEST and "does not match" in str(err.value)
        assert store.get(CID.for_block(b"new")) == b"new"
        assert server.stats()["blocks_served"] >= 1 and server.stats()["refusals"] >= 1
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_an_impostor_server_cannot_complete_the_handshake(store):
    real, impostor, client_id = Identity.generate(), Identity.generate(), Identity.generate()
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, store, impostor)
        with pytest.raises(TransportError, match="no answer"):   # CURVE answers another key with nothing
            async with open_client(client_id, endpoint, real.node_id, timeout=0.3):
                pass
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_hello_with_someone_elses_node_id_is_refused(store):
    server_id, client_id, victim = Identity.generate(), Identity.generate(), Identity.generate()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id)
        async with open_client(client_id, endpoint, server_id.node_id, hello=False) as c:
            with pytest.raises(PeerRefused, match="does not match the node id"):
                await c.hello(victim)
            with pytest.raises(PeerRefused) as err:
                await c.get(CID.for_block(b"x"))
            assert err.value.code == ErrorCode.REFUSED
        assert server.stats()["refusals"] == 2
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_fleet_admits_only_certified_nodes(store, caplog):
    fleet, server_id, member, outsider = (Identity.generate() for _ in range(4))
    other_fleet = Identity.generate()
    policy = Policy(admission="fleet", fleet_key=fleet.public_key,
                    cert=sign_certificate(fleet, server_id.node_id))   # it proves its membership to members too
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id, policy)
        async with open_client(member, endpoint, server_id.node_id,
                               cert=sign_certificate(fleet, member.node_id)) as c:
            assert await c.have([CID.for_block(b"x")]) == (False,)
        for cert, words in ((None, "missing"), (sign_certificate(other_fleet, outsider.node_id), "another fleet"),
                            (sign_certificate(fleet, member.node_id), "not " + outsider.node_id)):
            with pytest.raises(PeerRefused, match=words):
                async with open_client(outsider, endpoint, server_id.node_id, cert=cert):
                    pass
        assert server.stats()["refusals"] == 3
        assert any("not admitted to the fleet" in r.message for r in caplog.records)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_garbage_gets_an_error_and_the_server_keeps_serving(store):
    server_id, rogue, good = Identity.generate(), Identity.generate(), Identity.generate()
    store.put(CID.for_block(b"ok"), b"ok")
    ctx = zmq.Context()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id)
        raw = raw_dealer(ctx, rogue, server_id)
        raw.connect(endpoint)
        sock = TrioSocket(raw)
        junk = [[b"garbage"], [b"HE\x01\x05", b"\xff\xff"], [b"HE\x01\x06", b"\xa0", b"x"], [os.urandom(64)] * 3,
                [b"HE\x01\x0b", b"\xa2\x62id\x01\x64cids\x81\x41\x00"]]    # a GetMany of a 1-byte "CID"
        for frames in junk:
            await sock.send_multipart(frames)
            with trio.fail_after(5):
                reply = parse_message(await sock.recv_multipart())
            assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_REQUEST and reply.message
        async with open_client(good, endpoint, server_id.node_id) as c:
            assert await c.get(CID.for_block(b"ok")) == b"ok"
        assert server.stats()["bad_requests"] == len(junk)
        sock.close()
        nursery.cancel_scope.cancel()
    ctx.term()


@pytest.mark.trio
async def test_a_flooding_peer_is_limited_and_others_are_served(store):
    server_id, flooder, good = Identity.generate(), Identity.generate(), Identity.generate()
    store.put(CID.for_block(b"ok"), b"ok")
    ctx = zmq.Context()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id, Policy(rate=50, burst=50))
        async with open_client(flooder, endpoint, server_id.node_id, context=ctx) as f:
            frames = serialize_message(Get(1, CID.for_block(b"ok")))
            for _ in range(2000):
                await f.sock.send_multipart(frames)
            async with open_client(good, endpoint, server_id.node_id, context=ctx) as c:
                for _ in range(20):
                    assert await c.get(CID.for_block(b"ok")) == b"ok"
            with trio.fail_after(20):   # the good peer was served while the flood was still arriving
                while server.stats()["requests"] < 2000 + 20 + 2:
                    await trio.sleep(0.05)
        assert server.stats()["busy"] > 1000
        nursery.cancel_scope.cancel()
    ctx.term()


@pytest.mark.trio
async def test_get_many_keeps_order_checks_blocks_and_stops_at_a_refusal(store):
    server_id, client_id = Identity.generate(), Identity.generate()
    blocks = [os.urandom(n) for n in (1, 1000, 70_000, 262_144) * 25]
    cids = [CID.for_block(b) for b in blocks]
    store.put_many(list(zip(cids, blocks)))
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id, Policy(rate=1e6, burst=1e6))
        async with open_client(client_id, endpoint, server_id.node_id) as c:
            got = [data async for data in c.get_many(cids + cids[:3], depth=7)]
            assert got == blocks + blocks[:3]
            assert c._waiting == {}
            absent = CID.for_block(b"absent")
            seen = []
            with pytest.raises(PeerRefused) as err:
                async for data in c.get_many([cids[0], cids[1], absent, cids[2]], depth=4):
                    seen.append(data)
            assert err.value.code == ErrorCode.NOT_FOUND and seen == blocks[:2]
            assert c._waiting == {}   # the requests still in flight were forgotten
        assert server.stats()["blocks_served"] >= len(blocks) + 5
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_get_many_refuses_bytes_that_do_not_match(store, tmp_path):
    server_id, client_id = Identity.generate(), Identity.generate()
    good = os.urandom(5000)
    cid = CID.for_block(good)
    store.put(cid, good)
    # the server's copy goes bad behind its back, and its own check on read is bypassed: a lying peer
    store.get = lambda c: b"x" * 5000
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, store, server_id)
        async with open_client(client_id, endpoint, server_id.node_id) as c:
            with pytest.raises(TransportError, match="do not match"):
                async for _ in c.get_many([cid]):
                    pass
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_peer_that_does_not_read_its_replies_loses_them_and_others_are_served(store):
    server_id, hoarder, good = Identity.generate(), Identity.generate(), Identity.generate()
    big = os.urandom(262_144)
    cid = CID.for_block(big)
    store.put(cid, big)
    ctx = zmq.Context()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id, Policy(rate=1e6, burst=1e6))
        raw = raw_dealer(ctx, hoarder, server_id)
        raw.setsockopt(zmq.RCVHWM, 1)
        raw.setsockopt(zmq.RCVBUF, 4096)
        raw.connect(endpoint)
        sock = TrioSocket(raw)
        await sock.send_multipart(serialize_message(Hello(hoarder.node_id)))
        with trio.fail_after(5):
            assert isinstance(parse_message(await sock.recv_multipart()), Welcome)
        for i in range(1500):   # ~370 MiB of replies asked for, none read
            await sock.send_multipart(serialize_message(Get(i + 1, cid)))
        with trio.fail_after(30):
            while server.stats().get("dropped", 0) == 0:
                await trio.sleep(0.05)
        async with open_client(good, endpoint, server_id.node_id, context=ctx) as c:
            with trio.fail_after(10):
                assert await c.get(cid) == big
        sock.close()
        nursery.cancel_scope.cancel()
    ctx.term()


@pytest.mark.trio
async def test_every_block_served_is_spent_from_the_upload_limit(store):
    from edge.ratelimit import ByteRate

    class Counting(ByteRate):
        spent = 0

        def debit(self, n):
            Counting.spent += n
            return super().debit(n)
    server_id, client_id = Identity.generate(), Identity.generate()
    blocks = [os.urandom(100_000) for _ in range(6)]
    cids = [CID.for_block(b) for b in blocks]
    store.put_many(list(zip(cids, blocks)))
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, store, server_id, Policy(upload=Counting(2_000_000)))
        async with open_client(client_id, endpoint, server_id.node_id) as c:
            assert [d async for d in c.get_many(cids)] == blocks
            assert await c.request(lambda rid: Get(rid, cids[0], 10, 50)) is not None
        nursery.cancel_scope.cancel()
    assert Counting.spent == 600_000 + 50


@pytest.mark.trio
async def test_an_unexpected_failure_fails_one_request_not_the_server(store):
    server_id, client_id = Identity.generate(), Identity.generate()
    store.put(CID.for_block(b"ok"), b"ok")
    real = store.get

    def flaky(cid):
        if cid == CID.for_block(b"boom"):
            raise OSError(5, "Input/output error")   # not a StoreError: what a failing SD card can raise
        return real(cid)
    store.get = flaky
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id)
        async with open_client(client_id, endpoint, server_id.node_id, timeout=1) as c:
            with pytest.raises(PeerRefused) as err:
                await c.get(CID.for_block(b"boom"))
            assert err.value.code == ErrorCode.INTERNAL
            assert await c.get(CID.for_block(b"ok")) == b"ok"
        assert server.stats()["errors"] == 1
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_drain_finishes_the_writes_in_flight_then_answers_busy(store):
    server_id, writer = Identity.generate(), Identity.generate()
    blocks = [os.urandom(200_000) for _ in range(12)]
    cids = [CID.for_block(b) for b in blocks]
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id,
                                       Policy(write_allow=frozenset({writer.node_id}), rate=1e6, burst=1e6))
        async with open_client(writer, endpoint, server_id.node_id, timeout=10) as w:
            acknowledged = []

            async def put(cid, data):
                try:
                    if await w.put(cid, data) is True:
                        acknowledged.append(cid)
                except PeerRefused as exc:
                    assert exc.code == ErrorCode.BUSY
            async with trio.open_nursery() as puts:
                for cid, data in zip(cids, blocks):
                    puts.start_soon(put, cid, data)
                await trio.sleep(0.01)   # some puts are being written now
                await server.drain()
                assert server.stats()["puts"] == 0
            with pytest.raises(PeerRefused) as err:
                await w.get(cids[0])
            assert err.value.code == ErrorCode.BUSY
        for cid in acknowledged:   # nothing acknowledged is missing or half written
            assert store.get(cid) == blocks[cids.index(cid)]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_waiting_for_the_upload_limit_is_not_being_stuck(store):
    from edge.ratelimit import ByteRate
    server_id, client_id = Identity.generate(), Identity.generate()
    data = os.urandom(200_000)
    store.put(CID.for_block(data), data)
    clock = ManualClock()                                     # the server's and the limit's
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id,
                                       Policy(upload=ByteRate(100_000, burst=1, clock=clock)), clock)
        async with open_client(client_id, endpoint, server_id.node_id, timeout=10) as c:
            async with trio.open_nursery() as gets:
                gets.start_soon(c.get, CID.for_block(data))   # 2 s of debt at 100 kB/s
                await until(lambda: len(server.server.held.queue) == 1)   # paid, and held for its time
                clock.advance(1.0)                            # half way through the wait
                assert server.stuck_for() < 0.5
                gets.cancel_scope.cancel()                    # the rest of the wait shows nothing more
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_throughput_probe_gets_the_bytes_asked_for_and_pays_the_upload_limit(store):
    from edge.ratelimit import ByteRate
    from edge.wire import MAX_PROBE, Probe

    class Counting(ByteRate):
        spent = 0

        def take_now(self, n):
            ok = super().take_now(n)
            Counting.spent += n if ok else 0
            return ok
    server_id, client_id = Identity.generate(), Identity.generate()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id, Policy(upload=Counting(1_000_000, burst=400_000)))
        async with open_client(client_id, endpoint, server_id.node_id, hello=False) as c:
            with pytest.raises(PeerRefused) as err:                   # before a hello: no
                await c.probe(1000)
            assert err.value.code == ErrorCode.REFUSED
        async with open_client(client_id, endpoint, server_id.node_id) as c:
            assert "probe" in c.welcome.caps
            assert await c.probe(100_000) > 0
            assert await c.probe(MAX_PROBE) > 0
            with pytest.raises(PeerRefused) as err:                   # the limit cannot pay for it now: BUSY,
                await c.probe(MAX_PROBE)                              # never a wait that stalls other peers
            assert err.value.code == ErrorCode.BUSY
            with pytest.raises(PeerRefused) as err:                   # over the limit: a clear refusal
                await c.request(lambda rid: Probe(rid, MAX_PROBE + 1), rid=0)   # unreadable: answered as id 0
            assert err.value.code == ErrorCode.BAD_REQUEST and "out of range" in str(err.value)
        assert server.stats()["probes"] == 2 and server.stats()["probe_bytes"] == 100_000 + MAX_PROBE
        nursery.cancel_scope.cancel()
    assert Counting.spent == 100_000 + MAX_PROBE


@asynccontextmanager
async def tight_upload_limit(store, monkeypatch, **caps):
    """A server uploading at 100 kB/s (2 s per 200 KB block) on a clock that stands still, so a block held for
    the limit stays held until the test drains the server; its held-back caps set from caps. Yields (server,
    endpoint, node id, blocks, cids) for four 200 KB blocks it holds."""
    from edge.ratelimit import ByteRate
    from edge.transport import accounting
    for name, value in caps.items():
        monkeypatch.setattr(accounting, name, value)
    server_id = Identity.generate()
    blocks = [os.urandom(200_000) for _ in range(4)]
    cids = [CID.for_block(b) for b in blocks]
    store.put_many(list(zip(cids, blocks)))
    clock = ManualClock()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, store, server_id,
                                       Policy(upload=ByteRate(100_000, burst=1, clock=clock)), clock)
        yield server, endpoint, server_id.node_id, blocks, cids
        nursery.cancel_scope.cancel()


async def bytes_or_code(client, cid):
    try:
        return await client.get(cid)
    except PeerRefused as exc:
        return exc.code


@pytest.mark.trio
async def test_a_block_held_for_the_upload_limit_does_not_hold_up_other_peers(store, monkeypatch):
    """Under a tight upload limit a block waits for its turn, but hellos, Haves and refusals to other peers are
    answered meanwhile; past PACED_BYTES held back, Gets get BUSY; a drain sends what was held."""
    got, replies = [], []
    async with tight_upload_limit(store, monkeypatch, PACED_BYTES=700_000) as (server, endpoint, node, blocks, cids):
        async def slow_reader():
            async with open_client(Identity.generate(), endpoint, node, timeout=30) as c:
                got.append(await c.get(cids[0]))        # 2 s of debt at 100 kB/s
        async with trio.open_nursery() as readers:
            readers.start_soon(slow_reader)
            await until(lambda: server.stats()["held"] == 1)   # the first reader's block waits for the limit
            async with open_client(Identity.generate(), endpoint, node, timeout=30) as other:
                assert await other.have(cids[:2]) == (True, True)   # answered while the first block waits
                assert not got
                async with trio.open_nursery() as gets:
                    for cid in cids[1:]:
                        async def one(cid=cid):
                            replies.append(await bytes_or_code(other, cid))
                        gets.start_soon(one)
                    await until(lambda: replies and server.stats()["held"] == 3)
                    # held: the first reader's block and two of these (600 KB); the third would pass 700 KB
                    assert replies == [ErrorCode.BUSY] and server.stats()["held_bytes"] == 600_000 and not got
                    await server.drain()                     # a shutdown sends what was held, at once
        sent = [r for r in replies if isinstance(r, bytes)]   # which of the three was refused is Trio's choice
        assert len(sent) == 2 and len(set(sent)) == 2 and all(r in blocks[1:] for r in sent)
        assert got == [blocks[0]] and server.stats()["held"] == 0


@pytest.mark.trio
async def test_one_peer_cannot_fill_what_is_held_for_the_upload_limit(store, monkeypatch):
    outcome = {}
    async with tight_upload_limit(store, monkeypatch, PACED_PEER=300_000) as (server, endpoint, node, _, cids):
        async with open_client(Identity.generate(), endpoint, node, timeout=30) as flood, \
                open_client(Identity.generate(), endpoint, node, timeout=30) as polite:
            async def get(name, client, cid):
                outcome[name] = await bytes_or_code(client, cid)
            async with trio.open_nursery() as gets:
                gets.start_soon(get, "flood 1", flood, cids[0])
                await until(lambda: server.stats()["held"] == 1)
                gets.start_soon(get, "flood 2", flood, cids[1])   # over its own share: refused at once
                gets.start_soon(get, "polite", polite, cids[2])   # still held for it, not refused
                await until(lambda: "flood 2" in outcome and server.stats()["held"] == 2)
                assert outcome == {"flood 2": ErrorCode.BUSY}
                await server.drain()
    assert {k: v if isinstance(v, ErrorCode) else len(v) for k, v in outcome.items()} == \
        {"flood 1": 200_000, "flood 2": ErrorCode.BUSY, "polite": 200_000}


@pytest.mark.trio
async def test_what_is_held_for_the_upload_limit_has_a_hard_bound(store, monkeypatch):
    """Peers with nothing held still get one block held while others fill PACED_BYTES, but never past twice it."""
    outcome = []
    async with tight_upload_limit(store, monkeypatch, PACED_BYTES=250_000) as (server, endpoint, node, _, cids):
        async def one(cid):
            async with open_client(Identity.generate(), endpoint, node, timeout=30) as c:
                outcome.append(await bytes_or_code(c, cid))
        async with trio.open_nursery() as peers:
            for n, cid in enumerate(cids[:3], 1):   # three peers, one block each: 200 + 200 KB held (<= 500 KB),
                peers.start_soon(one, cid)          # the third would make 600 KB
                await until(lambda n=n: server.stats()["held"] + len(outcome) == n)
            assert outcome == [ErrorCode.BUSY] and server.stats()["held_bytes"] == 400_000
            await server.drain()
    assert sorted(r if isinstance(r, ErrorCode) else len(r) for r in outcome) == [ErrorCode.BUSY, 200_000, 200_000]
