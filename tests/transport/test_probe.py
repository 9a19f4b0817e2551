"""The agent's hello-and-probe of a neighbour against a real transport server: the RTT and a throughput sample
are recorded, and a link too slow for the probe is counted as slow and left alone until the next round."""

import functools
import threading
import time

import pytest
import trio

from edge import probes as probes_mod
from edge.agent import Agent
from edge.config import load_config
from edge.discovery.peers import PeerInfo
from edge.identity import Identity
from edge.ratelimit import ByteRate
from edge.store import Store
from edge.ipld.cid import CID
from edge.transport.client import PeerRefused, handshake_fails, open_client
from edge.transport.server import Policy, serve_transport


async def probe_once(tmp_path, upload):
    config = load_config(env={}, flags={"data_dir": str(tmp_path / "me"), "mdns": False})
    server_id = Identity.generate()
    with Store(str(tmp_path / "them")) as theirs, Store(config.data_dir) as mine:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_transport, theirs, server_id, Policy(upload=upload),
                                         "tcp://127.0.0.1:0")
            endpoint = server.endpoint
            agent = Agent(config, Identity.generate(), mine)
            host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
            peer = PeerInfo(server_id.node_id, [host], int(port))
            await agent.probes.probe(peer)
            first = (peer.rtt, peer.throughput, peer.throughput_at)
            await agent.probes.probe(peer)                  # the next hello: no second probe within PROBE_EVERY
            probes = server.stats().get("probes", 0) + server.stats().get("busy", 0)
            nursery.cancel_scope.cancel()
    return peer, first, probes


@pytest.mark.trio
async def test_a_neighbour_is_probed_once_per_round_and_its_throughput_recorded(tmp_path):
    peer, (rtt, throughput, at), probes = await probe_once(tmp_path, ByteRate(0))
    assert rtt is not None and throughput > 1e6 and time.time() - at < 10
    assert probes == 1 and peer.probes == 2 and peer.failures == 0
    assert peer.as_dict()["throughput"] == int(peer.throughput)


@pytest.mark.trio
async def test_a_link_too_slow_for_the_probe_is_counted_slow_and_not_flooded(tmp_path):
    # an upload limit of 100 KB/s cannot pay 256 KiB at once: the node says BUSY rather than stall its others
    peer, (rtt, throughput, at), probes = await probe_once(tmp_path, ByteRate(100_000))
    assert rtt is not None and peer.failures == 0 and not peer.rejected   # it answers; it is just slow
    assert throughput == pytest.approx(probes_mod.PROBE_SIZE / probes_mod.PROBE_TIMEOUT) and at > 0
    assert probes == 1                                                 # not probed again on the next hello


@pytest.mark.trio
async def test_an_impostor_is_rejected_and_a_node_that_is_only_slow_is_not(tmp_path, monkeypatch):
    """A neighbour whose CURVE handshake fails with the key of the node id it announced is an impostor; one
    whose hello merely times out (its serving thread held up by a read that does not return) is not."""
    config = load_config(env={}, flags={"data_dir": str(tmp_path / "me"), "mdns": False})
    real, claimed = Identity.generate(), Identity.generate()
    stuck = CID.for_block(b"a block on a dying card")
    held, release, answered = threading.Event(), threading.Event(), trio.Event()

    def get(cid):
        if cid == stuck:
            held.set()
            release.wait(10)
        return real_get(cid)
    with Store(str(tmp_path / "them")) as theirs, Store(config.data_dir) as mine:
        real_get = theirs.get
        theirs.get = get
        async with trio.open_nursery() as nursery:
            endpoint = (await nursery.start(serve_transport, theirs, real, Policy(), "tcp://127.0.0.1:0")).endpoint
            agent = Agent(config, Identity.generate(), mine)
            host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
            impostor = PeerInfo(claimed.node_id, [host], int(port))   # announces a node id that is not its own
            # the hello to another key can only time out (CURVE answers nothing): a short one, then the check
            monkeypatch.setattr(probes_mod, "PROBE_TIMEOUT", 0.3)
            await agent.probes.probe(impostor)
            assert impostor.rejected and "does not match" in impostor.rejected and impostor.score == 0

            async def get_stuck():
                async with open_client(Identity.generate(), endpoint, real.node_id, timeout=20) as c:
                    with pytest.raises(PeerRefused):
                        await c.get(stuck)
                answered.set()
            nursery.start_soon(get_stuck)
            await trio.to_thread.run_sync(held.wait, 10)             # the serving thread is now held
            # its handshake cannot finish either (the serving thread answers ZAP): undecided after `wait`, so
            # not an impostor; a shorter wait than the agent's 1.5 s decides the same
            monkeypatch.setattr(probes_mod, "handshake_fails", functools.partial(handshake_fails, wait=0.3))
            slow = PeerInfo(real.node_id, [host], int(port))
            await agent.probes.probe(slow)
            assert slow.failures == 1 and not slow.rejected
            release.set()
            await answered.wait()                                     # the serving thread is back
            await agent.probes.probe(slow)                                    # answering again: counted as up
            assert slow.failures == 1 and slow.probes == 2 and not slow.rejected
            nursery.cancel_scope.cancel()
