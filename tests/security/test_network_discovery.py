"""The attack suite of issue 20, the discovery boundary: what an announcement or a neighbour's address can do
to the peer table and the agent (findings 1, 7, 9 and 17). Rogue servers on loopback speaking CURVE, real
transport servers and stores, real agents as subprocesses; the mDNS attacks on real multicast are in
test_mdns_attacks.py (namespaces), the hostile neighbours' messages in test_network.py.

Run alone with `pytest -m attack`. Every test is bounded in count and time; figures are printed, not asserted.
"""

import os
import socket
import subprocess
import sys
import time

import pytest
import trio

from edge.agent import Agent
from edge.discovery import mdns, peers as peers_mod
from edge.discovery.mdns import check_record
from edge.discovery.peers import IMPOSTOR, PeerInfo, PeerTable
from edge.errors import DecodeError
from edge.fleet.certificates import sign_certificate
from edge.identity import Identity, check_node_id
from edge.store import Store
from edge.ipld.cid import CID
from edge.transport import server as server_mod
from edge.transport.client import PeerRefused, open_client
from edge.transport.server import Policy, serve_transport
from edge.wire import Hello, Welcome

from tests.security.node_ids import ALPHABET, bad_point_id, padding_alias, sign_alias
from tests.security.neighbours import a_store, agent_in

pytestmark = pytest.mark.attack


@pytest.fixture
def store(tmp_path):
    yield from a_store(tmp_path)


# F1 / F17: the mDNS boundary ----------------------------------------------------------------------------------------

def test_f01_an_announcement_whose_id_is_not_a_valid_point_is_dropped_at_the_boundary():
    good = Identity.generate().node_id
    props = {b"id": good.encode(), b"tp": b"4801", b"v": b"1", b"caps": b"store,probe", b"free": b"1000"}
    assert check_record(props, ["10.1.0.2"]).node == good
    bad = bad_point_id()
    with pytest.raises(DecodeError, match="not a valid Ed25519 point"):
        check_record(props | {b"id": bad.encode()}, ["10.1.0.2"])
    refused = {   # what each hostile record carries -> what the boundary says
        "padding alias": (props | {b"id": padding_alias(good).encode()}, "canonical"),
        "port 0": (props | {b"tp": b"0"}, "transport port"),
        "port 70000": (props | {b"tp": b"70000"}, "number"),
        "negative port": (props | {b"tp": b"-1"}, "number"),
        "huge TXT": (props | {b"pad": b"x" * 4000}, "over"),
        "control characters": (props | {b"caps": b"store\n<0>boom"}, "control"),
        "not text": (props | {b"tp": b"\xff\xfe"}, "ASCII"),
        "no id": ({k: v for k, v in props.items() if k != b"id"}, "no node id"),
    }
    for what, (record, words) in refused.items():
        with pytest.raises(DecodeError, match=words):
            check_record(record, ["10.1.0.2"])
        print(f"{what}: refused")
    for addresses in (["127.0.0.1"], ["0.0.0.0"], ["224.0.0.251"], ["255.255.255.255"], ["not an address"], []):
        with pytest.raises(DecodeError, match="no address"):
            check_record(props, addresses)
    assert check_record(props, ["127.0.0.1", "10.1.0.7"]).addresses == ["10.1.0.7"]   # the sane ones are kept
    assert mdns.parse_txt(props | {b"id": bad.encode()}, ["10.1.0.2"]) is None


@pytest.mark.trio
async def test_f01_a_probe_that_fails_in_any_way_ends_that_probe_only(tmp_path):
    """Before the fix a DecodeError from the probe's open_client ended the agent's nursery. Whatever id or
    address reaches a probe now (the boundary keeps bad ones out; this is the second wall), the probe returns."""
    config = agent_in(tmp_path)
    with Store(config.data_dir) as mine:
        agent = Agent(config, Identity.generate(), mine)
        for peer in (PeerInfo(bad_point_id(), ["127.0.0.1"], 9), PeerInfo("hn" + "x" * 3, ["127.0.0.1"], 9),
                     PeerInfo(Identity.generate().node_id, ["no such host"], 9)):
            with trio.fail_after(10):
                await agent.probes.probe(peer)
            assert peer.failures == 1 and peer.probes == 1
            print(f"probe of {peer.node[:12]}... at {peer.addresses[0]} failed alone")


def test_f17_one_text_per_key():
    ident = Identity.generate()
    node = ident.node_id
    spare = [node[:-1] + c for c in ALPHABET
             if c != node[-1] and ALPHABET.index(c) >> 4 == ALPHABET.index(node[-1]) >> 4]
    assert len(spare) == 15   # the 15 texts that differ only in the last character's unused bits
    for alias in spare:
        with pytest.raises(DecodeError, match="canonical"):
            check_node_id(alias)
    alias = sign_alias(node)
    assert alias != node and check_node_id(alias) == check_node_id(node) == ident.curve_public
    table = PeerTable(Identity.generate().node_id, expiry=30)
    first = table.seen(PeerInfo(node, ["10.1.0.2"], 4801), "a")
    again = table.seen(PeerInfo(alias, ["10.1.0.3"], 4801), "b")
    assert again is first and len(table.peers) == 1 and table.get(alias) is first   # one entry per CURVE key
    me = Identity.generate()
    mine = PeerTable(me.node_id, expiry=30)
    assert mine.seen(PeerInfo(sign_alias(me.node_id), ["10.1.0.4"], 4801)) is None and not mine.peers  # never itself


@pytest.mark.trio
async def test_f17_admission_and_writes_compare_curve_keys_not_texts(store):
    """A certificate and write_allow name a key: the key's other text gets the same (no more, no less), and no
    text gets another key in (held: the Hello's id must be the key the connection proved)."""
    fleet, server_id, member, stranger = (Identity.generate() for _ in range(4))
    cert = sign_certificate(fleet, member.node_id)
    alias = sign_alias(member.node_id)
    async with trio.open_nursery() as nursery:
        fleet_ep = (await nursery.start(serve_transport, store, server_id, Policy(
            admission="fleet", fleet_key=fleet.public_key, cert=sign_certificate(fleet, server_id.node_id)),
            "tcp://127.0.0.1:0")).endpoint
        async with open_client(member, fleet_ep, server_id.node_id, hello=False) as c:
            welcome = await c.request(lambda rid: Hello(alias, cert=cert), rid=0)
            assert isinstance(welcome, Welcome)          # its own key, under the key's other text
        async with open_client(stranger, fleet_ep, server_id.node_id, hello=False) as c:
            with pytest.raises(PeerRefused, match="does not match"):
                await c.request(lambda rid: Hello(member.node_id, cert=cert), rid=0)
        open_id = Identity.generate()
        open_ep = (await nursery.start(serve_transport, store, open_id, Policy(write_allow=frozenset({alias})),
                                       "tcp://127.0.0.1:0")).endpoint
        data = b"written by the allowed key"
        for who, allowed in ((member, True), (stranger, False)):
            async with open_client(who, open_ep, open_id.node_id) as c:
                if allowed:
                    assert await c.put(CID.for_block(data), data)   # write_allow names the key, in either text
                else:
                    with pytest.raises(PeerRefused, match="does not accept writes"):
                        await c.put(CID.for_block(data), data)
        nursery.cancel_scope.cancel()


# F7: descriptors -------------------------------------------------------------------------------------------------

def test_f07_a_flood_of_announcements_keeps_the_peer_table_bounded():
    table = PeerTable(Identity.generate().node_id, expiry=30)
    answering = [table.seen(PeerInfo(Identity.generate().node_id, [f"10.2.0.{i}"], 4801), f"real{i}")
                 for i in range(1, 4)]
    for p in answering:
        p.answered(p.endpoint())
    for i in range(1200):
        table.seen(PeerInfo(Identity.generate().node_id, [f"10.3.{i // 250}.{i % 250 + 1}"], 4801), f"flood{i}")
    print(f"1,200 announcements: {len(table.peers)} neighbours kept (at most {peers_mod.MAX_PEERS})")
    assert len(table.peers) <= peers_mod.MAX_PEERS
    assert all(table.get(p.node) is p for p in answering)   # the neighbours that answer are never evicted


@pytest.mark.trio
async def test_f07_a_connection_that_never_finishes_its_handshake_is_closed(store, monkeypatch):
    monkeypatch.setattr(server_mod, "HANDSHAKE_MS", 1000)
    async with trio.open_nursery() as nursery:
        endpoint = (await nursery.start(serve_transport, store, Identity.generate(), Policy(),
                                        "tcp://127.0.0.1:0")).endpoint
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(20)]
        t0 = trio.current_time()
        closed = 0
        with trio.fail_after(15):
            for stream in idle:
                try:
                    while await stream.receive_some(4096):   # libzmq's greeting, then the close
                        pass
                except trio.BrokenResourceError:             # closed with a reset: closed all the same
                    pass
                closed += 1
                await stream.aclose()
        print(f"{closed} idle connections closed by the server after {trio.current_time() - t0:.1f} s")
        assert closed == len(idle)
        nursery.cancel_scope.cancel()


def test_f07_the_unit_raises_the_descriptor_limit():
    unit = os.path.join(os.path.dirname(__file__), "..", "..", "provisioning", "hearth.service")
    with open(unit) as f:
        limits = [line for line in f if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0].split("=")[1]) >= 8192


def test_f07_the_agent_survives_running_out_of_descriptors(tmp_path):
    """An agent limited to 200 descriptors, with a neighbour to probe, while 400 idle TCP connections hit its
    transport port: it keeps running and answering, and serves a client once they are gone."""
    from tests.agent.netns import Node
    neighbour = Node(None, str(tmp_path / "n"), {"HEARTH_MDNS": "false", "HEARTH_TRANSPORT_PORT": "0",
                                                  "HEARTH_METRICS_PORT": "0", "HEARTH_GATEWAY_PORT": "0"})
    neighbour.start()
    victim = None
    conns = []
    try:
        endpoint = neighbour.status()["endpoint"]
        victim = Node(None, str(tmp_path / "v"), {
            "HEARTH_MDNS": "false", "HEARTH_TRANSPORT_PORT": "0", "HEARTH_METRICS_PORT": "0",
            "HEARTH_GATEWAY_PORT": "0", "HEARTH_STATIC_PEERS": f"{neighbour.node_id}@{endpoint[6:]}"})
        victim.proc = subprocess.Popen(   # started by hand: under a limit of 200 descriptors
            ["prlimit", "--nofile=200:200", sys.executable, "-m", "edge", "--data-dir", victim.data_dir, "run"],
            stdout=victim.log, stderr=subprocess.STDOUT, env=victim.env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                status = victim.status()
                break
            except AssertionError:
                assert victim.proc.poll() is None, victim.logs()
                time.sleep(0.2)
        port = int(status["endpoint"].rsplit(":", 1)[1])
        for _ in range(400):
            try:
                conns.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(7)   # a probing round with no descriptors left, and the handshake timeout (5 s)
        assert victim.proc.poll() is None, victim.logs()
        print(f"{len(conns)} idle connections opened; the agent is up: {victim.status()['peers']} neighbour(s)")
        for c in conns:
            c.close()
        conns.clear()
        out = victim.run("peers", "--json")
        assert out.returncode == 0 and neighbour.node_id in out.stdout, out.stderr

        async def served():
            async with open_client(Identity.generate(), status["endpoint"].replace("0.0.0.0", "127.0.0.1"),
                                   victim.node_id, timeout=5) as c:
                return await c.have([CID.for_block(b"x")])
        assert trio.run(served) == (False,)
        assert victim.proc.poll() is None
    finally:
        for c in conns:
            c.close()
        if victim is not None and victim.proc is not None:
            victim.stop()
        neighbour.stop()


# F9: an address announced for a real node by someone else -----------------------------------------------------------

@pytest.mark.trio
async def test_f09_a_spoofed_address_does_not_displace_a_verified_one_nor_mark_the_node(store, tmp_path):
    config = agent_in(tmp_path)
    real, attacker = Identity.generate(), Identity.generate()
    async with trio.open_nursery() as nursery:
        real_ep = (await nursery.start(serve_transport, store, real, Policy(), "tcp://127.0.0.1:0")).endpoint
        with Store(str(tmp_path / "attacker")) as theirs:
            fake_ep = (await nursery.start(serve_transport, theirs, attacker, Policy(), "tcp://127.0.0.1:0")).endpoint
            with Store(config.data_dir) as mine:
                agent = Agent(config, Identity.generate(), mine)
                host, port = real_ep.removeprefix("tcp://").rsplit(":", 1)
                peer = agent.peers.seen(PeerInfo(real.node_id, [host], int(port)), "real._hearth._tcp.local.")
                await agent.probes.probe(peer)
                assert peer.verified and peer.endpoint() == real_ep
                # the attacker announces the real node's id at its own address (another name, then the same)
                fhost, fport = fake_ep.removeprefix("tcp://").rsplit(":", 1)
                for source in ("evil._hearth._tcp.local.", "real._hearth._tcp.local."):
                    assert agent.peers.seen(PeerInfo(real.node_id, [fhost], int(fport)), source) is peer
                    assert peer.endpoint() == real_ep   # an unverified route never displaces a verified one
                    await agent.probes.probe(peer)
                    assert not peer.rejected and peer.score > 0 and peer.failures == 0
                # the attacker's address is tried only while it is the only one: then it is marked, not the node
                spoofed = PeerInfo(real.node_id, [fhost], int(fport))
                alone = PeerTable(agent.identity.node_id, expiry=30)
                alone.seen(spoofed, "evil")
                await agent.probes.probe(spoofed)
                assert spoofed.routes[fake_ep].impostor and spoofed.rejected == IMPOSTOR
                alone.seen(PeerInfo(real.node_id, [host], int(port)), "real")   # the real node announces
                assert spoofed.endpoint() == real_ep
                await agent.probes.probe(spoofed)
                assert spoofed.verified and not spoofed.rejected and spoofed.score > 0
                # a goodbye forged for the real node's announcement does not remove what answers
                agent.peers.gone(real.node_id, "real._hearth._tcp.local.")
                assert agent.peers.get(real.node_id) is peer and peer.endpoint() == real_ep
                print("routes:", {e: ("verified" if r.verified else "impostor" if r.impostor else "unverified")
                                  for e, r in spoofed.routes.items()})
        nursery.cancel_scope.cancel()

