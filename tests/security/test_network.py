"""The attack suite of issue 20, node to node: each test is named for the audit's finding it keeps fixed (f01 ...)
and stages the attack for real: rogue servers on loopback speaking CURVE, real transport servers and stores,
real agents as subprocesses. The mDNS attacks on real multicast are in test_mdns_attacks.py (namespaces).

Run alone with `pytest -m attack`. Every test is bounded in count and time; figures are printed, not asserted.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import nacl.bindings
import pytest
import trio
import zmq
import zmq.utils.z85

from edge.agent import Agent
from edge.config import load_config
from edge.discovery import mdns, peers as peers_mod
from edge.discovery.mdns import check_record
from edge.discovery.peers import IMPOSTOR, PeerInfo, PeerTable
from edge.errors import DecodeError, EdgeError
from edge.fetch import DagTooLarge, Fetch
from edge import fetch as fetch_mod
from edge.fleet import sign_certificate
from edge.identity import Identity, check_node_id, node_id_of, public_key_of
from edge.logsafe import printable
from edge.store import Store
from edge.store.service import AsyncStore
from edge.ipld.cid import CID, DAG_PB
from edge.ipld.dagpb import PBLink, PBNode, serialize_pbnode
from edge.transport import server as server_mod
from edge.transport.client import NotInFleet, PeerRefused, TransportError, open_client
from edge.transport.server import Policy, serve_transport
from edge.wire import Error, ErrorCode, Have, HaveReply, Hello, Welcome, parse_message, serialize_message

pytestmark = pytest.mark.attack


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bad_point_id() -> str:
    """A node id of the right shape (canonical base32) whose key is not a valid Ed25519 point."""
    while True:
        key = os.urandom(32)
        try:
            nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key)
        except Exception:   # noqa: BLE001 - libsodium refuses it: what we are looking for
            return node_id_of(key)


ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def padding_alias(node_id: str) -> str:
    """The same key with the last character's 4 unused bits set: another text base32 decodes to the same key."""
    i = ALPHABET.index(node_id[-1])
    return node_id[:-1] + ALPHABET[(i & 0x10) | (i & 0x0f ^ 0x0f or 1)]


def sign_alias(node_id: str) -> str:
    """The other text naming the same CURVE key: the Ed25519 key with its sign bit flipped."""
    key = bytearray(public_key_of(node_id))
    key[31] ^= 0x80
    return node_id_of(bytes(key))


class Rogue:
    """A server that finishes CURVE handshakes as `identity` and answers each message with respond(msg, frames)
    (a list of frames to send back, or None): a neighbour that misbehaves on purpose."""

    def __init__(self, identity: Identity, respond):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_server = True
        self.sock.curve_secretkey = zmq.utils.z85.encode(identity.curve_secret)
        self.sock.curve_publickey = zmq.utils.z85.encode(identity.curve_public)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.respond, self.stopping, self.received = respond, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            if not self.sock.poll(50):
                continue
            route, *frames = self.sock.recv_multipart()
            self.received += 1
            try:
                msg = parse_message(frames)
            except DecodeError:
                continue
            reply = self.respond(msg, frames)
            if reply is not None:
                self.sock.send_multipart([route, *reply])

    def disconnects(self) -> int:
        n = 0
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
            n += 1
        return n

    def close(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "server")) as s:
        yield s


def agent_in(tmp_path, **flags):
    config = load_config(env={}, flags={"data_dir": str(tmp_path / "me"), "mdns": False, **flags})
    return config


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
                await agent.probe(peer)
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
        _, fleet_ep = await nursery.start(serve_transport, store, server_id, Policy(
            admission="fleet", fleet_key=fleet.public_key, cert=sign_certificate(fleet, server_id.node_id)),
            "tcp://127.0.0.1:0")
        async with open_client(member, fleet_ep, server_id.node_id, hello=False) as c:
            welcome = await c.request(lambda rid: Hello(alias, cert=cert), rid=0)
            assert isinstance(welcome, Welcome)          # its own key, under the key's other text
        async with open_client(stranger, fleet_ep, server_id.node_id, hello=False) as c:
            with pytest.raises(PeerRefused, match="does not match"):
                await c.request(lambda rid: Hello(member.node_id, cert=cert), rid=0)
        open_id = Identity.generate()
        _, open_ep = await nursery.start(serve_transport, store, open_id, Policy(write_allow=frozenset({alias})),
                                         "tcp://127.0.0.1:0")
        data = b"written by the allowed key"
        for who, allowed in ((member, True), (stranger, False)):
            async with open_client(who, open_ep, open_id.node_id) as c:
                if allowed:
                    assert await c.put(CID.for_block(data), data)   # write_allow names the key, in either text
                else:
                    with pytest.raises(PeerRefused, match="does not accept writes"):
                        await c.put(CID.for_block(data), data)
        nursery.cancel_scope.cancel()


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
    _, endpoint = await nursery.start(serve_transport, source, server, policy or Policy(), "tcp://127.0.0.1:0")

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
            _, endpoint = await nursery.start(serve_transport, store, ident, policy, "tcp://127.0.0.1:0")
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
            await agent.probe(outsider_peer)
            assert outsider_peer.rejected and "not a member of this fleet" in outsider_peer.rejected
            assert agent.peers.best() == []
            with pytest.raises(Exception, match="no neighbour"):
                await agent.fetch_dag(CID.for_block(b"anything"))
            print(f"the outsider: {outsider_peer.rejected}")
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
        _, endpoint = await nursery.start(serve_transport, store, Identity.generate(), Policy(), "tcp://127.0.0.1:0")
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
        _, real_ep = await nursery.start(serve_transport, store, real, Policy(), "tcp://127.0.0.1:0")
        with Store(str(tmp_path / "attacker")) as theirs:
            _, fake_ep = await nursery.start(serve_transport, theirs, attacker, Policy(), "tcp://127.0.0.1:0")
            with Store(config.data_dir) as mine:
                agent = Agent(config, Identity.generate(), mine)
                host, port = real_ep.removeprefix("tcp://").rsplit(":", 1)
                peer = agent.peers.seen(PeerInfo(real.node_id, [host], int(port)), "real._hearth._tcp.local.")
                await agent.probe(peer)
                assert peer.verified and peer.endpoint() == real_ep
                # the attacker announces the real node's id at its own address (another name, then the same)
                fhost, fport = fake_ep.removeprefix("tcp://").rsplit(":", 1)
                for source in ("evil._hearth._tcp.local.", "real._hearth._tcp.local."):
                    assert agent.peers.seen(PeerInfo(real.node_id, [fhost], int(fport)), source) is peer
                    assert peer.endpoint() == real_ep   # an unverified route never displaces a verified one
                    await agent.probe(peer)
                    assert not peer.rejected and peer.score > 0 and peer.failures == 0
                # the attacker's address is tried only while it is the only one: then it is marked, not the node
                spoofed = PeerInfo(real.node_id, [fhost], int(fport))
                alone = PeerTable(agent.identity.node_id, expiry=30)
                alone.seen(spoofed, "evil")
                await agent.probe(spoofed)
                assert spoofed.routes[fake_ep].impostor and spoofed.rejected == IMPOSTOR
                alone.seen(PeerInfo(real.node_id, [host], int(port)), "real")   # the real node announces
                assert spoofed.endpoint() == real_ep
                await agent.probe(spoofed)
                assert spoofed.verified and not spoofed.rejected and spoofed.score > 0
                # a goodbye forged for the real node's announcement does not remove what answers
                agent.peers.gone(real.node_id, "real._hearth._tcp.local.")
                assert agent.peers.get(real.node_id) is peer and peer.endpoint() == real_ep
                print("routes:", {e: ("verified" if r.verified else "impostor" if r.impostor else "unverified")
                                  for e, r in spoofed.routes.items()})
        nursery.cancel_scope.cancel()


# F10: throwaway keys -----------------------------------------------------------------------------------------------

@pytest.mark.trio
async def test_f10_throwaway_keys_do_not_grow_the_servers_state(store, monkeypatch):
    monkeypatch.setattr(server_mod, "MAX_PEERS", 200)
    server_id, good = Identity.generate(), Identity.generate()
    ctx = zmq.Context()
    async with trio.open_nursery() as nursery:
        server, endpoint = await nursery.start(serve_transport, store, server_id, Policy(), "tcp://127.0.0.1:0")
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
            print(f"{keys} throwaway keys: {len(server.peers)} peers kept (bound {server_mod.MAX_PEERS}), "
                  f"{server.metrics.get('peers_forgotten', 0)} forgotten, RSS {(rss() - before) / 1e6:+.1f} MB")
            assert len(server.peers) <= server_mod.MAX_PEERS
        nursery.cancel_scope.cancel()
    ctx.term()


def test_f10_an_idle_peer_is_forgotten(store, monkeypatch):
    ts = server_mod.TransportServer(store, Identity.generate(), Policy())
    try:
        ids = [zmq.utils.z85.encode(Identity.generate().curve_public).decode() for _ in range(3)]
        for i in ids[:2]:
            ts._peer(i)
        for p in ts.peers.values():
            p.used -= server_mod.PEER_IDLE + 1
        ts._peer(ids[2])
        assert list(ts.peers) == [ids[2]]
    finally:
        ts.close()


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
        server, endpoint = await nursery.start(serve_transport, store, server_id, Policy(rate=100, burst=2000),
                                               "tcp://127.0.0.1:0")
        async with open_client(Identity.generate(), endpoint, server_id.node_id) as c:
            assert await c.have(cids) == (False,) * 1024
            with pytest.raises(PeerRefused) as err:
                await c.have(cids)      # 2,048 lookups asked of a bucket of 2,000
            assert err.value.code == ErrorCode.BUSY
        print(f"requests counted: {server.metrics['requests']}, busy: {server.metrics['busy']}")
        assert server.metrics["requests"] >= 2048
        nursery.cancel_scope.cancel()
