"""Every transfer pays the lane of its peer's link class: the transport's blocks and probes by the address its
connection comes from (libzmq's Peer-Address), the gateway's bodies by the client's address; real sockets."""

import functools
import ipaddress
import os
import urllib.request

import pytest
import trio

from edge.governor.caps import DOWN, UP
from edge.governor.governor import Governor
from edge.governor.links import LAN, WAN, LinkClassifier
from edge.identity import Identity
from edge.ipld.cid import CID
from edge.store import Store
from edge.transport.client import open_client
from edge.transport.http import Response, serve_http
from edge.transport.server import Policy, serve_transport


def governor(loopback_is: str) -> Governor:
    """A governor whose classifier puts loopback in LAN, or (as a test of WAN) the reverse: loopback is always
    LAN, so the WAN case lists no networks and asks for 127.0.0.2, which the test's sockets come from."""
    nets = [ipaddress.ip_network("127.0.0.0/8")] if loopback_is == LAN else []
    return Governor(classifier=LinkClassifier(interfaces={"lo": nets}, routed=False), wan_up=5_000_000,
                    lan_up=0, synchronised=lambda: True)


@pytest.mark.trio
async def test_blocks_to_a_lan_peer_pay_the_lan_lane(tmp_path):
    g = governor(LAN)
    seen = []

    def upload_for(address):
        seen.append(address)
        return g.upload_for(address)
    server_id, client_id = Identity.generate(), Identity.generate()
    blocks = [os.urandom(100_000) for _ in range(4)]
    cids = [CID.for_block(b) for b in blocks]
    with Store(str(tmp_path / "s")) as store:
        store.put_many(list(zip(cids, blocks)))
        async with trio.open_nursery() as nursery:
            server = await nursery.start(functools.partial(
                serve_transport, store, server_id, Policy(upload=g.caps.lanes[(UP, WAN)], upload_for=upload_for),
                "tcp://127.0.0.1:0"))
            async with open_client(client_id, server.endpoint, server_id.node_id) as c:
                assert [d async for d in c.get_many(cids)] == blocks
                await c.probe(50_000)
            nursery.cancel_scope.cancel()
    assert seen == ["127.0.0.1"]   # classified once, by the address its connection comes from
    carried = g.caps.carried()
    assert carried[(UP, LAN)] == 400_000 + 50_000
    assert carried[(UP, WAN)] == 0


@pytest.mark.trio
async def test_the_gateways_bodies_pay_by_the_clients_link_class():
    g = governor(LAN)
    body = os.urandom(300_000)

    async def answer(request):
        return Response(200, {"content-type": "application/octet-stream"}, body)
    async with trio.open_nursery() as nursery:
        http = await nursery.start(functools.partial(serve_http, answer, 0, host="127.0.0.1",
                                                     upload=g.upload_for))
        got = await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{http.port}/x", timeout=10).read())
        assert got == body
        nursery.cancel_scope.cancel()
    assert g.caps.carried()[(UP, LAN)] == 300_000
    assert g.caps.carried()[(UP, WAN)] == 0


def test_an_unknown_or_outside_address_is_wan():
    g = governor(WAN)
    assert g.upload_for(None) is g.caps.lanes[(UP, WAN)]
    assert g.download_for("203.0.113.5") is g.caps.lanes[(DOWN, WAN)]
    assert g.download_for("127.0.0.1") is g.caps.lanes[(DOWN, LAN)]


@pytest.mark.trio
async def test_a_block_past_its_lanes_ahead_waits_unpaid_and_pays_the_rate_in_force(tmp_path):
    """The transport schedules at most AHEAD seconds of a lane's debt; a block asked for beyond that waits unpaid,
    so a rate lowered meanwhile (the back-off) applies to it. A clock that moves only when the test moves it."""
    from edge.governor.caps import Lane
    from tests.clock import ManualClock, until
    clock = ManualClock()
    lane = Lane(100_000, clock=clock)                 # burst 64 KiB: a 100 KB block leaves 0.36 s of debt
    server_id = Identity.generate()
    blocks = [os.urandom(100_000) for _ in range(2)]
    cids = [CID.for_block(b) for b in blocks]
    got = []
    with Store(str(tmp_path / "s")) as store:
        store.put_many(list(zip(cids, blocks)))
        async with trio.open_nursery() as nursery:
            server = await nursery.start(functools.partial(
                serve_transport, store, server_id, Policy(upload=lane, upload_for=lambda address: lane),
                "tcp://127.0.0.1:0", clock=clock))
            held = server.server.held

            async def read():
                async with open_client(Identity.generate(), server.endpoint, server_id.node_id, timeout=60) as c:
                    async for data in c.get_many(cids):
                        got.append(data)
            nursery.start_soon(read)
            await until(lambda: len(held.queue) == 2)
            assert sorted(entry[5] for entry in held.queue) == [False, True]   # one paid and held, one unpaid
            lane.set_rate(10_000)                     # the back-off, while both wait
            clock.advance(0.4)                        # the paid one's time
            await until(lambda: len(got) == 1)
            assert lane.carried == 100_000
            clock.advance(1.0)                        # at the old rate the second would have gone by now
            await trio.sleep(0.7)                     # (the serving thread looks at least every 0.5 s)
            assert len(got) == 1 and lane.carried == 100_000
            clock.advance(3.0)                        # the lane has room again: paid at the new rate, held
            await until(lambda: len(held.queue) == 1 and held.queue[0][5])
            clock.advance(11.0)
            await until(lambda: len(got) == 2)
            assert got == blocks and lane.carried == 200_000
            nursery.cancel_scope.cancel()
