"""The attack suite of issue 20, node to node: what a hostile neighbour's messages can do (findings 3, 4, 6, 10,
19 and 22). Each test is named for the audit's finding it keeps fixed and stages the attack for real: rogue
servers on loopback speaking CURVE, real transport servers and stores, real agents as subprocesses. The
discovery boundary is in test_network_discovery.py.

Run alone with `pytest -m attack`. Every test is bounded in count and time; figures are printed, not asserted.
"""

import os
import time

import pytest
import trio
import zmq
import zmq.utils.z85

from edge.agent import Agent
from edge.discovery.peers import PeerInfo
from edge.errors import EdgeError
from edge.fetch import DagTooLarge, Fetch
from edge import fetch as fetch_mod
from edge.fleet.certificates import sign_certificate
from edge.identity import Identity
from edge.logsafe import printable
from edge.store import Store
from edge.store.service import AsyncStore
from edge.ipld.cid import CID, DAG_PB
from edge.ipld.dagpb import PBLink, PBNode, serialize_pbnode
from edge.transport import accounting
from edge.transport.client import NotInFleet, PeerRefused, TransportError, open_client
from edge.transport.server import Policy, serve_transport
from edge.wire import Error, ErrorCode, Have, HaveReply, Hello, Welcome, serialize_message
from tests.clock import ManualClock

from tests.security.neighbours import Rogue, a_store, agent_in, rss

pytestmark = pytest.mark.attack


@pytest.fixture
def store(tmp_path):
    yield from a_store(tmp_path)


# F3: a neighbour answering with huge messages -----------------------------------------------------------------------

@pytest.mark.trio
async def test_f03_a_neighbour_answering_with_huge_messages_is_dropped_not_buffered():
    big = bytes(64 << 20)   # 64 MiB a message (the audit used 400 MiB; the bound is what matters)
    server = Identity.generate()
    rogue = Rogue(server, lambda msg, frames: serialize_message(Welcome(server.node_id, 1, ("probe",)))[:2] + [big]
                  if isinstance(msg, Hello) else None)
    before = rss()
    try:
        for _ in range(3):
            with pytest.raises(TransportError):
                async with open_client(Identity.generate(), rogue.endpoint, server.node_id, timeout=1.5):
                    pass
        grown = rss() - before
        dropped = rogue.disconnects()
        print(f"3 hellos answered with 64 MiB each: RSS grew {grown / 1e6:.1f} MB; the client dropped the "
              f"connection {dropped} times")
        assert dropped >= 1   # libzmq refused the oversized message (MAXMSGSIZE) and closed the connection
    finally:
        rogue.close()


# F4: a DAG bomb from a real neighbour ---------------------------------------------------------------------------------

def bomb(store, links=1000, levels=3) -> CID:
    """A DAG of `levels` blocks, each DAG-PB node linking `links` times to the one below: 3 blocks that name
    1,000,000 leaves if links are followed without removing duplicates."""
    leaf = b"the only leaf"
    cid = CID.for_block(leaf)
    store.put(cid, leaf)
    for _ in range(levels - 1):
        node = serialize_pbnode(PBNode(b"\x08\x02", tuple(PBLink(cid, None, len(leaf)) for _ in range(links))))
        cid = CID.for_block(node, DAG_PB)
        store.put(cid, node)
    return cid


async def fetch_from(nursery, source, target, policy=None):
    server = Identity.generate()
    endpoint = (await nursery.start(serve_transport, source, server, policy or Policy(), "tcp://127.0.0.1:0")).endpoint

    async def client(*, task_status):
        async with open_client(Identity.generate(), endpoint, server.node_id) as c:
            task_status.started(c)
            await trio.sleep_forever()
    c = await nursery.start(client)
    return Fetch(AsyncStore(target), {"n": c}, {}, {"blocks": 0, "bytes": 0, "failures": 0})


@pytest.mark.trio
async def test_f04_a_dag_bomb_is_three_blocks_not_a_million(store, tmp_path):
    root = bomb(store, links=1000, levels=3)
    with Store(str(tmp_path / "target")) as target:
        async with trio.open_nursery() as nursery:
            f = await fetch_from(nursery, store, target)
            before, t0 = rss(), time.monotonic()
            with trio.fail_after(30):
                assert await f.dag(root) == 3
            print(f"a 3-block DAG of 1,000 links per node: 3 blocks fetched in {time.monotonic() - t0:.2f} s, "
                  f"RSS {(rss() - before) / 1e6:+.1f} MB")
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f04_links_depth_and_blocks_of_a_fetch_are_capped(store, tmp_path, monkeypatch):
    wide = bomb(store, links=600, levels=2)
    deep = bomb(store, links=1, levels=8)
    distinct_leaves = [os.urandom(16) for _ in range(50)]
    for leaf in distinct_leaves:
        store.put(CID.for_block(leaf), leaf)
    many = serialize_pbnode(PBNode(b"\x08\x02", tuple(PBLink(CID.for_block(x)) for x in distinct_leaves)))
    many_cid = CID.for_block(many, DAG_PB)
    store.put(many_cid, many)
    monkeypatch.setattr(fetch_mod, "MAX_LINKS", 500)
    monkeypatch.setattr(fetch_mod, "MAX_DEPTH", 4)
    monkeypatch.setattr(fetch_mod, "MAX_BLOCKS", 20)
    with Store(str(tmp_path / "target")) as target:
        async with trio.open_nursery() as nursery:
            for root, words in ((wide, "600 links"), (deep, "levels deep"), (many_cid, "more than 20 blocks")):
                f = await fetch_from(nursery, store, target)
                with trio.fail_after(30), pytest.raises(DagTooLarge, match=words) as err:
                    await f.dag(root)
                print(f"refused: {err.value}")
            nursery.cancel_scope.cancel()


# F6: the fleet boundary both ways ----------------------------------------------------------------------------------

@pytest.mark.trio
async def test_f06_a_fleet_node_neither_talks_to_nor_fetches_from_a_non_member(store, tmp_path):
    fleet, other_fleet = Identity.generate(), Identity.generate()
    me, member, outsider, foreign = (Identity.generate() for _ in range(4))
    my_cert = sign_certificate(fleet, me.node_id)
    async with trio.open_nursery() as nursery:
        servers = {}
        for name, ident, policy in (
                ("member", member, Policy(admission="fleet", fleet_key=fleet.public_key,
                                          cert=sign_certificate(fleet, member.node_id))),
                ("outsider", outsider, Policy()),   # open: it admits anyone and has no certificate
                ("foreign", foreign, Policy(admission="fleet", fleet_key=other_fleet.public_key,
                                            cert=sign_certificate(other_fleet, foreign.node_id)))):
            endpoint = (await nursery.start(serve_transport, store, ident, policy, "tcp://127.0.0.1:0")).endpoint
            servers[name] = (ident, endpoint)
        ident, endpoint = servers["member"]
        async with open_client(me, endpoint, ident.node_id, cert=my_cert) as c:
            assert c.welcome.cert                                           # it proved its membership
        for name, words in (("outsider", "no certificate"), ("foreign", "another fleet")):
            ident, endpoint = servers[name]
            with pytest.raises((NotInFleet, PeerRefused), match=words):   # a foreign fleet refuses us first
                async with open_client(me, endpoint, ident.node_id, cert=my_cert):
                    pass
        # the agent: the outsider is rejected at its probe, so neither ranked nor fetched from
        cert_file = tmp_path / "fleet.cert"
        cert_file.write_bytes(my_cert)
        config = agent_in(tmp_path, admission="fleet", fleet_key=fleet.node_id, fleet_cert=str(cert_file))
        os.makedirs(config.data_dir, exist_ok=True)
        with Store(config.data_dir) as mine:
            agent = Agent(config, me, mine)
            ident, endpoint = servers["outsider"]
            host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
            outsider_peer = agent.peers.seen(PeerInfo(ident.node_id, [host], int(port)))
            await agent.probes.probe(outsider_peer)
            assert outsider_peer.rejected and "not a member of this fleet" in outsider_peer.rejected
            assert agent.peers.best() == []
            with pytest.raises(Exception, match="no neighbour"):
                await agent.fetch_dag(CID.for_block(b"anything"))
            print(f"the outsider: {outsider_peer.rejected}")
        nursery.cancel_scope.cancel()


# F10: throwaway keys -----------------------------------------------------------------------------------------------

@pytest.mark.trio
async def test_f10_throwaway_keys_do_not_grow_the_servers_state(store, monkeypatch):
    monkeypatch.setattr(accounting, "MAX_PEERS", 200)
    server_id, good = Identity.generate(), Identity.generate()
    ctx = zmq.Context()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_transport, store, server_id, Policy(), "tcp://127.0.0.1:0")
        endpoint = server.endpoint
        async with open_client(good, endpoint, server_id.node_id) as c:
            before = rss()
            keys = 0
            for round_ in range(10):
                socks = []
                for _ in range(100):   # each a new CURVE key that says hello and leaves
                    ident = Identity.generate()
                    s = ctx.socket(zmq.DEALER)
                    s.setsockopt(zmq.LINGER, 0)
                    s.curve_secretkey = zmq.utils.z85.encode(ident.curve_secret)
                    s.curve_publickey = zmq.utils.z85.encode(ident.curve_public)
                    s.curve_serverkey = zmq.utils.z85.encode(server_id.curve_public)
                    s.connect(endpoint)
                    s.send_multipart(serialize_message(Hello(ident.node_id)))
                    socks.append(s)
                for s in socks:
                    assert s.poll(5000), "the server did not answer a hello"
                    s.recv_multipart()
                    s.close(0)
                keys += len(socks)
                assert await c.have([CID.for_block(b"x")]) == (False,)   # the peer that keeps working is served
            print(f"{keys} throwaway keys: {server.stats()['peers']} peers kept (bound {accounting.MAX_PEERS}), "
                  f"{server.stats().get('peers_forgotten', 0)} forgotten, RSS {(rss() - before) / 1e6:+.1f} MB")
            assert server.stats()["peers"] <= accounting.MAX_PEERS
        nursery.cancel_scope.cancel()
    ctx.term()


def test_f10_an_idle_peer_is_forgotten():
    clock = ManualClock()
    book = accounting.PeerBook(10.0, accounting.transport_counters(), clock)
    ids = [zmq.utils.z85.encode(Identity.generate().curve_public).decode() for _ in range(3)]
    for i in ids[:2]:
        book.peer(i)
    clock.advance(accounting.PEER_IDLE + 1)
    book.peer(ids[2])
    assert list(book.peers) == [ids[2]]


# F19: control characters from the network in the log --------------------------------------------------------------

@pytest.mark.trio
async def test_f19_a_neighbours_text_with_newlines_is_logged_as_one_line(tmp_path, caplog):
    server = Identity.generate()
    evil = "nope\n<0>EMERGENCY: the disk is on fire\x1b[2J"
    rogue = Rogue(server, lambda msg, frames: serialize_message(
        Welcome(server.node_id, 1, ()) if isinstance(msg, Hello) else Error(msg.id, ErrorCode.REFUSED, evil)))
    try:
        async with open_client(Identity.generate(), rogue.endpoint, server.node_id, timeout=5) as c:
            with pytest.raises(PeerRefused) as err:
                await c.get(CID.for_block(b"x"))
        assert "\n" not in str(err.value) and "\x1b" not in str(err.value) and "\\x0a<0>" in str(err.value)
    finally:
        rogue.close()
    # a neighbour that says it holds a block and refuses it with that text: the fetch logs why, on one line
    def respond(msg, frames):
        if isinstance(msg, Hello):
            return serialize_message(Welcome(server.node_id, 1, ()))
        if isinstance(msg, Have):
            return serialize_message(HaveReply(msg.id, (True,) * len(msg.cids)))
        return serialize_message(Error(msg.id, ErrorCode.REFUSED, evil))
    rogue = Rogue(server, respond)
    try:
        with Store(str(tmp_path / "target")) as target:
            async with open_client(Identity.generate(), rogue.endpoint, server.node_id, timeout=5) as c:
                f = Fetch(AsyncStore(target), {"rogue": c}, {}, {"blocks": 0, "bytes": 0, "failures": 0})
                with pytest.raises(EdgeError, match="no neighbour could give"):
                    await f.dag(CID.for_block(b"a block it will not give"))
    finally:
        rogue.close()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("edge")]
    assert any("EMERGENCY" in line for line in lines) and not any("\n" in line for line in lines), lines
    assert printable("a\nb\x00c\u202ed") == "a\\x0ab\\x00c\\u202ed"
    print("logged:", [line for line in lines if "EMERGENCY" in line])


# F22: a Have is as many requests as it names CIDs -----------------------------------------------------------------

@pytest.mark.trio
async def test_f22_a_have_is_charged_per_cid(store):
    server_id = Identity.generate()
    cids = [CID.for_block(os.urandom(8)) for _ in range(1024)]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_transport, store, server_id, Policy(rate=100, burst=2000),
                                     "tcp://127.0.0.1:0")
        endpoint = server.endpoint
        async with open_client(Identity.generate(), endpoint, server_id.node_id) as c:
            assert await c.have(cids) == (False,) * 1024
            with pytest.raises(PeerRefused) as err:
                await c.have(cids)      # 2,048 lookups asked of a bucket of 2,000
            assert err.value.code == ErrorCode.BUSY
        print(f"requests counted: {server.stats()['requests']}, busy: {server.stats()['busy']}")
        assert server.stats()["requests"] >= 2048
        nursery.cancel_scope.cancel()

