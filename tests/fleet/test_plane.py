"""The plane's handling of what the broker delivers, on a real peer table and real records: replays, other
regions, other fleets' nodes, a flood and a full table are dropped and counted, never raised."""

import time
from types import SimpleNamespace

from edge.config import load_config
from edge.discovery.peers import PeerTable
from edge.fleet import plane as plane_module
from edge.fleet.certificates import sign_certificate
from edge.fleet.plane import Plane
from edge.fleet.records import Presence, presence_topic, serialize_record
from edge.identity import Identity

FLEET = Identity.generate()


def make_plane(tmp_path, fleet_key: str = "", max_wan: int = 64) -> Plane:
    me = Identity.generate()
    config = load_config(env={}, flags={"data_dir": str(tmp_path), "fleet_broker": "mqtt://127.0.0.1",
                                        "fleet_region": "west", "fleet_key": fleet_key or None,
                                        "fleet_cert": "x" if fleet_key else None,
                                        "admission": "fleet" if fleet_key else None})
    agent = SimpleNamespace(config=config, identity=me, peers=PeerTable(me.node_id, 30.0, max_wan=max_wan),
                            cert=None)
    return Plane(agent, ("store",))


def record(node: Identity, seq: int, region: str = "west", cert: bytes = b"", host: str = "198.51.100.1",
           age: int = 0):
    """A signed presence record (topic, payload) made age seconds ago."""
    data = serialize_record(Presence(node.node_id, seq, int(time.time()) - age, region, ((host, 4801),), cert=cert),
                            node)
    return presence_topic("open" if not cert else FLEET.node_id, region, node.node_id), data


def test_records_in_order_replays_and_other_regions(tmp_path):
    plane = make_plane(tmp_path)
    node = Identity.generate()
    assert plane.handle(*record(node, 5)) == "accepted"
    assert plane.agent.peers.get(node.node_id).source == "fleet"
    assert plane.handle(*record(node, 5)) == "dropped: replayed"
    assert plane.handle(*record(node, 4, host="203.0.113.66")) == "dropped: replayed"
    assert plane.handle(*record(node, 6, host="198.51.100.2")) == "accepted"   # a new address is a new route
    assert len(plane.agent.peers.get(node.node_id).routes) == 2
    topic, data = record(Identity.generate(), 1, region="east")
    assert plane.handle(topic, data) == "dropped: topic"
    assert plane.handle(topic.replace("/east/", "/west/"), data) == "dropped: malformed"   # region differs
    assert plane.handle(presence_topic("open", "west", node.node_id), b"") == "cleared"
    assert plane.agent.peers.get(node.node_id) is None   # its routes were never verified


def test_a_fleet_admits_only_certified_nodes(tmp_path):
    plane = make_plane(tmp_path, FLEET.node_id)
    member, stranger = Identity.generate(), Identity.generate()
    assert plane.handle(*record(member, 1, cert=sign_certificate(FLEET, member.node_id))) == "accepted"
    assert plane.handle(*record(stranger, 1, cert=sign_certificate(Identity.generate(), stranger.node_id))) == \
        "dropped: not certified"
    topic, data = record(stranger, 2)
    assert plane.handle(topic.replace("/open/", f"/{FLEET.node_id}/"), data) == "dropped: not certified"


def test_a_flood_and_a_full_table_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(plane_module, "RATE", 10.0)
    plane = make_plane(tmp_path, max_wan=3)
    plane._tokens = 40.0
    first = [plane.handle(*record(Identity.generate(), 1)) for _ in range(3)]
    for peer in plane.agent.peers.peers.values():   # three WAN neighbours that answer: nothing displaces them
        peer.answered(peer.endpoint())
    outcomes = first + [plane.handle(*record(Identity.generate(), 1)) for _ in range(57)]
    assert outcomes.count("accepted") == 3 and outcomes.count("dropped: table full") >= 30
    assert outcomes.count("dropped: flood") >= 15
    assert len([p for p in plane.agent.peers.peers.values() if p.wan]) == 3
    print(f"\n{dict(plane.counts)}")


def test_a_full_store_of_records_drops_spares_never_a_listed_neighbours(tmp_path, monkeypatch):
    """Records beyond the table's WAN cap are held in reserve; when the store is full a newcomer's record
    displaces the oldest spare, so a listed neighbour keeps its record (and is not expired unrefreshed and
    replaced by an unprobed one)."""
    monkeypatch.setattr(plane_module, "MAX_RECORDS", 4)
    plane = make_plane(tmp_path, max_wan=2)
    listed = [Identity.generate() for _ in range(2)]
    for seq, node in enumerate(listed, 1):              # the oldest records: the two listed neighbours
        assert plane.handle(*record(node, seq, age=2)) == "accepted"    # (the times are whole seconds)
    outcomes = [plane.handle(*record(Identity.generate(), 1)) for _ in range(6)]
    assert outcomes == ["dropped: table full"] * 6      # the table is full of tried-less neighbours: no turnover
    assert len(plane.records) == 4
    assert all(node.node_id in plane.records for node in listed)
    assert all(plane.agent.peers.get(node.node_id) is not None for node in listed)


def test_fleet_status_summary_counts_quiet_and_busiest():
    from edge.fleet.records import Status
    from edge.fleet.telemetry import summarize, summary_lines
    now = 1_800_000_000
    nodes = [Identity.generate().node_id for _ in range(4)]
    records = {nodes[0]: Status(nodes[0], 1, now - 10, "0.2.0", "a", served=500),
               nodes[1]: Status(nodes[1], 1, now - 20, "0.1.0", "b", served=900, health="degraded", errors=3),
               nodes[2]: Status(nodes[2], 1, now - 30, "0.2.0", "a", served=100),
               nodes[3]: Status(nodes[3], 1, now - 4000, "0.1.0", "a", served=10**9)}
    s = summarize(records, refused=2, now=now)
    assert (s["nodes"], s["reporting"], s["refused"]) == (4, 3, 2)
    assert s["versions"] == {"0.2.0": 2, "0.1.0": 1} and s["slots"] == {"a": 2, "b": 1}
    assert s["health"] == {"ok": 2, "degraded": 1} and s["unhealthy"][0]["node"] == nodes[1]
    assert [q["node"] for q in s["quiet"]] == [nodes[3]] and s["quiet"][0]["silent_s"] == 4000
    assert [b["node"] for b in s["busiest"]] == [nodes[1], nodes[0], nodes[2]]   # the quiet one is not counted
    text = "\n".join(summary_lines(s))
    print("\n" + text)
    assert "4 known, 3 reporting, 1 gone quiet" in text and "DEGRADED" in text and "QUIET" in text
