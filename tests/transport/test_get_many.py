"""GetMany and Blocks on real sockets (loopback TCP, CURVE, a real store): small blocks come back several to a
message, every entry is answered (a block, or an error with its own id), and the rules for a Get hold for each
entry (admission, the per-peer rate, draining, the upload limit)."""

import os
from contextlib import asynccontextmanager

import pytest
import trio
import zmq
import zmq.utils.z85

from edge.identity import Identity
from edge.store import Store
from edge.ipld.cid import CID
from edge.transport import requests as requests_mod
from edge.transport import server as server_mod
from edge.transport import client as client_mod
from edge.transport.client import TransportError, open_client
from edge.transport.server import Policy, serve_transport
from edge.transport.zmqtrio import ZERO_COPY_MIN, TrioSocket
from edge.wire import Block, Blocks, Error, ErrorCode, GetMany, Hello, Welcome, parse_message, serialize_message
from tests.transport.helpers import raw_dealer


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "a")) as s:
        yield s


def held(store, *sizes):
    blocks = [os.urandom(n) for n in sizes]
    cids = [CID.for_block(b) for b in blocks]
    store.put_many(list(zip(cids, blocks)))
    return blocks, cids


@asynccontextmanager
async def raw_peer(store, policy=None, hello=True):
    """(server, a raw CURVE socket to it that has said hello unless hello is False)."""
    server_id, me = Identity.generate(), Identity.generate()
    ctx = zmq.Context()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_transport, store, server_id, policy or Policy(),
                                     "tcp://127.0.0.1:0")
        endpoint = server.endpoint
        raw = raw_dealer(ctx, me, server_id)
        raw.connect(endpoint)
        sock = TrioSocket(raw)
        if hello:
            await sock.send_multipart(serialize_message(Hello(me.node_id)))
            welcome = parse_message(await sock.recv_multipart())
            assert isinstance(welcome, Welcome) and "getmany" in welcome.caps
        yield server, sock
        sock.close()
        nursery.cancel_scope.cancel()
    ctx.term()


def curve_server(ctx, identity):
    """(a raw CURVE ROUTER for identity on a free local port, as a TrioSocket; the port): a scripted node."""
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_secretkey = zmq.utils.z85.encode(identity.curve_secret)
    router.curve_publickey = zmq.utils.z85.encode(identity.curve_public)
    return TrioSocket(router), router.bind_to_random_port("tcp://127.0.0.1")


async def answers(sock, count):
    """{request id: bytes or Error} for count entries, and the messages they came in."""
    got, messages = {}, []
    with trio.fail_after(10):
        while len(got) < count:
            msg = parse_message(await sock.recv_multipart())
            messages.append(msg)
            if isinstance(msg, Blocks):
                got.update(msg.parts())
            elif isinstance(msg, Block):
                got[msg.id] = msg.data
            else:
                got[msg.id] = msg
    return got, messages


@pytest.mark.trio
async def test_small_blocks_come_back_together_and_every_entry_is_answered(store):
    blocks, cids = held(store, 1000, 0, 5000, 300_000, 200)
    absent = CID.for_block(b"absent")
    async with raw_peer(store) as (server, sock):
        await sock.send_multipart(serialize_message(GetMany(100, (cids[0], absent, cids[1], cids[2], cids[3],
                                                                  cids[4]))))
        got, messages = await answers(sock, 6)
    assert [got[i] for i in (100, 102, 103, 104, 105)] == blocks
    assert isinstance(got[101], Error) and got[101].code == ErrorCode.NOT_FOUND and str(absent) in got[101].message
    carried = [m.ids for m in messages if isinstance(m, Blocks)]
    # the three small ones before the big one in one message; the big one passes BLOCKS_BYTES and ends it
    assert carried == [(100, 102, 103, 104), (105,)]
    assert server.stats()["blocks_served"] == 5 and server.stats()["not_found"] == 1
    assert server.stats()["requests"] == 6 + 1   # each entry, and the hello


@pytest.mark.trio
async def test_before_hello_every_entry_is_refused(store):
    _, cids = held(store, 10, 20)
    async with raw_peer(store, hello=False) as (server, sock):
        await sock.send_multipart(serialize_message(GetMany(7, tuple(cids))))
        got, _ = await answers(sock, 2)
    assert all(isinstance(got[i], Error) and got[i].code == ErrorCode.REFUSED for i in (7, 8))
    assert server.stats().get("blocks_served", 0) == 0


@pytest.mark.trio
async def test_entries_past_the_peers_rate_get_busy(store):
    blocks, cids = held(store, *[100] * 10)
    async with raw_peer(store, Policy(rate=0.01, burst=5)) as (server, sock):   # the hello takes one of 5
        await sock.send_multipart(serialize_message(GetMany(1, tuple(cids))))
        got, _ = await answers(sock, 10)
    assert [got[i] for i in range(1, 5)] == blocks[:4]
    assert all(isinstance(got[i], Error) and got[i].code == ErrorCode.BUSY for i in range(5, 11))
    assert server.stats()["busy"] == 6


@pytest.mark.trio
async def test_a_draining_node_answers_busy_to_each(store):
    _, cids = held(store, 10, 20, 30)
    async with raw_peer(store) as (server, sock):
        await server.drain()
        await sock.send_multipart(serialize_message(GetMany(1, tuple(cids))))
        got, _ = await answers(sock, 3)
    assert all(got[i].code == ErrorCode.BUSY and "shutting down" in got[i].message for i in (1, 2, 3))


@pytest.mark.trio
async def test_under_the_upload_limit_blocks_are_held_and_all_arrive(store):
    from edge.ratelimit import ByteRate
    blocks, cids = held(store, *[60_000] * 6)
    async with raw_peer(store, Policy(upload=ByteRate(1_000_000, burst=100_000))) as (server, sock):
        await sock.send_multipart(serialize_message(GetMany(1, tuple(cids))))
        got, messages = await answers(sock, 6)
    assert [got[i] for i in range(1, 7)] == blocks
    assert any(not isinstance(m, Blocks) for m in messages)   # some waited for the limit and went on their own
    assert server.stats()["held"] == 0 and server.stats()["held_bytes"] == 0


@pytest.mark.trio
async def test_the_client_asks_for_many_only_of_a_node_that_lists_getmany(store, monkeypatch):
    blocks, cids = held(store, *[500] * 40)
    served_many = []
    real = server_mod.TransportServer._get_many

    def counting(self, router, route, peer, msg):
        served_many.append(len(msg.cids))
        return real(self, router, route, peer, msg)
    monkeypatch.setattr(server_mod.TransportServer, "_get_many", counting)
    for caps, expect_many in ((("store", "probe", "getmany"), True), (("store", "probe"), False)):
        monkeypatch.setattr(requests_mod, "CAPS", caps)
        served_many.clear()
        server_id = Identity.generate()
        async with trio.open_nursery() as nursery:
            endpoint = (await nursery.start(serve_transport, store, server_id, Policy(), "tcp://127.0.0.1:0")).endpoint
            async with open_client(Identity.generate(), endpoint, server_id.node_id) as c:
                assert [d async for d in c.get_many(cids, depth=16)] == blocks
            nursery.cancel_scope.cancel()
        assert bool(served_many) == expect_many
        if expect_many:
            assert sum(served_many) == 40 and max(served_many) == 8   # half the window at a time


@pytest.mark.trio
async def test_odd_entries_and_messages_that_are_not_requests(store):
    blocks, cids = held(store, 100)
    identity = CID(1, 0x55, b"\x00\x05hello")                            # its bytes are in the CID
    v0 = CID(0, 0x70, CID.for_block(b"a dag-pb node nobody stored").multihash)
    other_hash = CID(1, 0x55, b"\xa0\xe4\x02\x20" + bytes(32))          # blake2b-256: this node cannot check it
    async with raw_peer(store) as (server, sock):
        await sock.send_multipart(serialize_message(GetMany(1, (identity, v0, cids[0]))))
        got, _ = await answers(sock, 3)
        replies = []
        for msg in (GetMany(10, (cids[0], other_hash)), Blocks((1,), (2,), b"ok")):
            await sock.send_multipart(serialize_message(msg))
            with trio.fail_after(5):
                replies.append(parse_message(await sock.recv_multipart()))
    assert got[1] == b"hello" and got[2].code == ErrorCode.NOT_FOUND and got[3] == blocks[0]
    # a message naming a hash this node cannot read is refused whole, as a Get of it is
    assert replies[0].code == ErrorCode.BAD_REQUEST and "multihash" in replies[0].message
    assert replies[1].code == ErrorCode.BAD_REQUEST and "Blocks is not a request" in replies[1].message
    assert server.stats()["bad_requests"] == 1   # the parse failure; the reply type is refused by the answer


@pytest.mark.trio
async def test_large_blocks_arrive_whole_and_checked_without_a_copy(store):
    """Blocks of ZERO_COPY_MIN bytes or more come as read-only views of the frame they arrived in (get_many),
    or as bytes (get); small ones of the same message as bytes; each equal to what was stored."""
    blocks, cids = held(store, 256 * 1024, 100 * 1024, 1000, 256 * 1024, 70 * 1024, 300)
    server_id = Identity.generate()
    async with trio.open_nursery() as nursery:
        endpoint = (await nursery.start(serve_transport, store, server_id, Policy(), "tcp://127.0.0.1:0")).endpoint
        async with open_client(Identity.generate(), endpoint, server_id.node_id) as c:
            got = [d async for d in c.get_many(cids, depth=8)]
            assert [bytes(d) for d in got] == blocks
            for data in got:
                assert type(data) is bytes if len(data) < ZERO_COPY_MIN else \
                    type(data) is memoryview and data.readonly
            one = await c.get(cids[0])
            assert type(one) is bytes and one == blocks[0]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
@pytest.mark.parametrize("size", [256 * 1024, 1024])
async def test_a_block_that_does_not_match_its_cid_is_refused(size):
    """The receiver checks a zero-copy block as it checks any other, and each small block of a Blocks reply
    (hashed together with the others): a peer that sends other bytes is caught, in a reply of good ones too."""
    data = os.urandom(size)
    cid = CID.for_block(data)
    other = bytearray(data)
    other[-1] ^= 1
    me, server_id = Identity.generate(), Identity.generate()
    ctx = zmq.Context()
    lier, port = curve_server(ctx, server_id)

    async def lie():   # a node that answers hello, then every get of cid with the other bytes
        while True:
            route, *frames = await lier.recv_multipart()
            msg = parse_message(frames)
            if isinstance(msg, Hello):
                reply = Welcome(server_id.node_id, 1, ("getmany",))
            elif isinstance(msg, GetMany):   # the first entry true, the others not
                reply = Blocks(tuple(msg.id + i for i in range(len(msg.cids))), (len(other),) * len(msg.cids),
                               data + bytes(other) * (len(msg.cids) - 1))
            else:
                reply = Block(msg.id, msg.cid, 0, len(other), bytes(other))
            await lier.send_multipart([route, *serialize_message(reply)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lie)
        async with open_client(me, f"tcp://127.0.0.1:{port}", server_id.node_id) as c:
            with pytest.raises(TransportError, match="do not match"):
                await c.get(cid)
            got = []
            with pytest.raises(TransportError, match="do not match"):
                async for block in c.get_many([cid, cid, cid], depth=6):
                    got.append(bytes(block))
            assert got == [data]
        nursery.cancel_scope.cancel()
    lier.close()
    ctx.term()


@pytest.mark.trio
@pytest.mark.parametrize("layout", ["in order", "reversed", "split in two", "two requests in one"])
async def test_blocks_replies_in_any_layout_are_checked_and_yielded_in_order(layout, monkeypatch):
    """A Blocks reply that answers one GetMany in order is checked with one comparison of its digests; any other
    layout (entries in another order, one request's entries over two replies, or one reply answering entries of
    two requests) takes the per-entry path: every block is still checked and yielded in the order asked."""
    blocks = [os.urandom(1000 + i) for i in range(12)]
    cids = [CID.for_block(b) for b in blocks]
    by_cid = dict(zip(cids, blocks))
    me, server_id = Identity.generate(), Identity.generate()
    ctx = zmq.Context()
    server, port = curve_server(ctx, server_id)
    held, answered = [], []   # "two requests in one": the first GetMany's entries, sent with the second's

    def blocks_of(entries):
        return Blocks(tuple(rid for rid, _ in entries), tuple(len(by_cid[c]) for _, c in entries),
                      b"".join(by_cid[c] for _, c in entries))

    async def serve():
        while True:
            route, *frames = await server.recv_multipart()
            msg = parse_message(frames)
            if isinstance(msg, Hello):
                replies = [Welcome(server_id.node_id, 1, ("getmany",))]
            elif isinstance(msg, GetMany):
                entries = [(msg.id + i, c) for i, c in enumerate(msg.cids)]
                if layout == "reversed":
                    replies = [blocks_of(entries[::-1])]
                elif layout == "split in two":
                    replies = [blocks_of(entries[:2]), blocks_of(entries[2:])]
                elif layout == "two requests in one" and not answered:
                    held.extend(entries)
                    answered.append(msg.id)
                    replies = []
                else:
                    replies = [blocks_of(held + entries)]
                    held.clear()
            else:
                replies = [Block(msg.id, msg.cid, 0, len(by_cid[msg.cid]), by_cid[msg.cid])]
            for reply in replies:
                await server.send_multipart([route, *serialize_message(reply)])
    taken = []   # what each reply's one-comparison check said
    take = client_mod._Window.take
    monkeypatch.setattr(client_mod._Window, "take", lambda *args: taken.append(take(*args)) or taken[-1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with open_client(me, f"tcp://127.0.0.1:{port}", server_id.node_id) as c:
            got = [bytes(b) async for b in c.get_many(cids, depth=8)]   # GetMany of 4 at a time
            assert got == blocks
            assert c._waiting == {}
        nursery.cancel_scope.cancel()
    server.close()
    ctx.term()
    assert taken == {"in order": [True] * 3, "reversed": [False] * 3, "split in two": [True] * 6,
                     "two requests in one": [False, True]}[layout]


@pytest.mark.trio
@pytest.mark.parametrize("lie_at", [None, 2])
async def test_large_blocks_that_arrive_together_are_hashed_together_and_each_checked(lie_at, monkeypatch):
    """A large block travels alone in its Blocks reply; the replies the receiving task finds waiting are hashed in
    one native call (two at a time with SHA-NI). Each is still checked against its own CID: a lie among good
    replies is caught at its turn, the blocks before it are yielded whole."""
    blocks = [os.urandom(256 * 1024) for _ in range(4)]
    cids = [CID.for_block(b) for b in blocks]
    me, server_id = Identity.generate(), Identity.generate()
    ctx = zmq.Context()
    server, port = curve_server(ctx, server_id)

    async def serve():   # each GetMany answered by one reply a block, sent back to back
        while True:
            route, *frames = await server.recv_multipart()
            msg = parse_message(frames)
            if isinstance(msg, Hello):
                replies = [Welcome(server_id.node_id, 1, ("getmany",))]
            else:
                replies = []
                for i, cid in enumerate(msg.cids):
                    data = bytearray(blocks[cids.index(cid)])
                    if cids.index(cid) == lie_at:
                        data[0] ^= 1
                    replies.append(Blocks((msg.id + i,), (len(data),), bytes(data)))
            for reply in replies:
                await server.send_multipart([route, *serialize_message(reply)])
    hashed, taken = [], []
    take_all, take = client_mod.Client._take_all_blocks, client_mod._Window.take
    monkeypatch.setattr(client_mod.Client, "_take_all_blocks",
                        lambda self, replies: hashed.append(len(replies)) or take_all(self, replies))
    monkeypatch.setattr(client_mod._Window, "take", lambda *args: taken.append(take(*args)) or taken[-1])
    got = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with open_client(me, f"tcp://127.0.0.1:{port}", server_id.node_id) as c:
            if lie_at is None:
                got = [bytes(b) async for b in c.get_many(cids, depth=8)]
            else:
                with pytest.raises(TransportError, match="do not match"):
                    async for b in c.get_many(cids, depth=8):
                        got.append(bytes(b))
        nursery.cancel_scope.cancel()
    server.close()
    ctx.term()
    assert got == blocks[:lie_at]
    # each reply that arrived hashed once, in batches; the lie fails its comparison, the others pass (the client
    # may be gone before the reply after the lie arrives)
    assert max(hashed) <= client_mod.RECEIVE_BATCH
    if lie_at is None:
        assert sum(hashed) == 4 and taken == [True] * 4
    else:
        assert sum(hashed) >= 3 and taken[:3] == [True, True, False] and all(taken[3:])
