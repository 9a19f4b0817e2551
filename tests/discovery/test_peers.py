"""The peer table's record of each neighbour: first and last seen, expiry, the throughput samples and the score
that orders neighbours for fetching."""

from edge.discovery.peers import PeerInfo, PeerTable, Route
from tests.clock import ManualClock

NODE = "hn" + "b" * 52


def peer(node="x", rtt=0.001, probes=10, failures=0, throughput=None):
    p = PeerInfo(node, ["10.0.0.2"], 4801, rtt=rtt, probes=probes, failures=failures)
    if throughput is not None:
        p.measured(throughput, now=100.0)
    return p


def test_throughput_samples_are_smoothed_and_dated():
    p = peer()
    assert p.throughput is None and p.as_dict()["throughput"] is None
    p.measured(10e6, now=5.0)
    assert p.throughput == 10e6 and p.throughput_at == 5.0
    p.measured(2e6, now=6.0)
    assert p.throughput == 6e6 and p.as_dict()["throughput"] == 6_000_000


def test_the_score_prefers_reliable_then_near_then_fast_neighbours():
    fast = peer("fast", throughput=90e6)
    slow = peer("slow", throughput=1e6)
    unmeasured = peer("new")
    flaky = peer("flaky", probes=10, failures=5, throughput=90e6)
    far = peer("far", rtt=0.05, throughput=90e6)
    assert fast.score > unmeasured.score and fast.score > slow.score
    assert fast.score > far.score > flaky.score
    assert peer(probes=0).score == 0.05
    rejected = peer("bad", throughput=90e6)
    rejected.rejected = "its transport key does not match"
    assert rejected.score == 0.0
    table = PeerTable(NODE, expiry=30)
    for p in (slow, flaky, fast, far, rejected):
        table.seen(p)
    assert [p.node for p in table.best()] == ["fast", "far", "slow", "flaky"]


def test_an_announcement_keeps_what_was_measured_and_silence_expires():
    clock = ManualClock()
    table = PeerTable(NODE, expiry=30, clock=clock)
    known = table.seen(peer("a", throughput=5e6))
    clock.advance(1)
    again = table.seen(PeerInfo("a", ["10.0.0.9"], 4801))
    # a second address is a route of its own, tried first while neither has answered (a node that moved)
    assert again is known and known.endpoint() == "tcp://10.0.0.9:4801" and known.throughput == 5e6
    assert known.as_dict()["addresses"] == ["10.0.0.9", "10.0.0.2"]
    assert table.seen(PeerInfo(NODE, ["10.0.0.1"], 4801)) is None and NODE not in table.peers   # never itself
    clock.advance(30)
    assert table.expire() == [] and list(known.routes) == ["tcp://10.0.0.9:4801"]   # the older route went first
    clock.advance(1)
    assert table.expire() == ["a"] and not table.peers


def test_an_expired_neighbour_that_had_answered_stays_dormant_and_comes_back_when_it_answers_again():
    """A neighbour rebooting for longer than the expiry announces the same mDNS records again, which zeroconf
    keeps in its cache and raises no event for: the prober still tries it, and its answer lists it again."""
    from edge.discovery.peers import DORMANT_FOR, MAX_DORMANT
    clock = ManualClock(1000.0)
    table = PeerTable(NODE, expiry=30, clock=clock)
    known = table.seen(peer("a", throughput=5e6))
    known.answered(known.endpoint(), now=clock())
    stranger = table.seen(peer("never-answered"))        # announced, never verified: not kept
    stranger.last_seen = clock()
    clock.advance(31)
    assert sorted(table.expire()) == ["a", "never-answered"] and not table.peers
    assert list(table.dormant) == ["a"]
    assert table.revive("a") is None                     # no answer since it expired: still out
    clock.advance(5)
    known.answered(known.endpoint(), now=clock())        # the prober's hello got through
    back = table.revive("a")
    assert back is known and table.get("a") is known and not table.dormant
    assert back.throughput == 5e6 and stranger is not None   # its history kept
    # an announcement of a dormant node takes the ordinary way back
    clock.advance(31)
    table.expire()
    assert "a" in table.dormant
    table.seen(PeerInfo("a", ["10.0.0.2"], 4801))
    assert "a" not in table.dormant and table.get("a") is not None
    # dormant entries are bounded in time and number
    clock.advance(31)
    table.expire()
    clock.advance(DORMANT_FOR + 1)
    table.expire()
    assert not table.dormant
    for i in range(MAX_DORMANT + 10):
        p = table.seen(peer(f"n{i}"))
        p.answered(p.endpoint(), now=clock() + i * 0.001)     # n0 silent longest
    clock.advance(31)
    table.expire()
    assert len(table.dormant) == MAX_DORMANT and "n0" not in table.dormant


def test_fleet_neighbours_come_after_lan_ones_and_are_capped():
    from edge.identity import Identity
    ids = [Identity.generate().node_id for _ in range(5)]
    table = PeerTable("self", 30.0, max_wan=3)
    lan = table.seen(PeerInfo(ids[0], ["192.168.1.5"], 4801), source="box._hearth._tcp.local.")
    wan = [table.fleet_seen(n, [("198.51.100.%d" % i, 4801)], caps=("store",), free=7) for i, n in
           enumerate(ids[1:4])]
    assert all(w is not None and w.source == "fleet" and w.free == 7 for w in wan) and lan.source == "mdns"
    for w in wan:   # better measured than the LAN neighbour: still after it
        w.probes, w.rtt, w.throughput = 10, 0.001, 1e9
        w.answered(w.endpoint())
    assert table.best()[0].node == ids[0] and [p.as_dict()["source"] for p in table.best()][1:] == ["fleet"] * 3
    assert table.fleet_seen(ids[4], [("198.51.100.9", 4801)]) is None   # three WAN neighbours answering: full
    fresh = Route("198.51.100.0", 4801, source="fleet")   # the first one's route no longer verified
    wan[0].routes = {fresh.endpoint(): fresh}
    assert table.fleet_seen(ids[4], [("198.51.100.9", 4801)]) is not None   # an unverified one makes room
    assert table.get(ids[1]) is None
    table.fleet_gone(ids[2])   # an unsigned clear: a verified route stays
    assert table.get(ids[2]) is not None
    table.fleet_gone(ids[4])   # ... an unverified one goes
    assert table.get(ids[4]) is None


def test_wan_neighbours_that_never_answer_are_tried_less_often_and_displaced_slowly():
    from edge.discovery.peers import WAN_PROBE_BACKOFF, WAN_TURNOVER
    from edge.identity import Identity
    ids = [Identity.generate().node_id for _ in range(5)]
    clock = [1000.0]
    table = PeerTable("self", 30.0, max_wan=2, clock=lambda: clock[0])
    a, b = (table.fleet_seen(n, [(f"198.51.100.{i}", 4801)]) for i, n in enumerate(ids[:2]))
    lan = table.seen(PeerInfo(ids[4], ["192.168.1.5"], 4801), source="box._hearth._tcp.local.")
    # a newcomer does not displace neighbours not yet tried
    assert table.fleet_seen(ids[2], [("198.51.100.2", 4801)]) is None
    # each failure doubles the wait before the next probe, up to WAN_PROBE_BACKOFF; LAN ones every round
    waits, now = [], 0.0
    for _ in range(10):
        assert a.probe_due(now, 5.0)
        a.probes, a.failures = a.probes + 1, a.failures + 1
        assert not a.probe_due(now, 5.0)
        waits.append(a.next_probe - now)
        now = a.next_probe
    assert waits[:3] == [5.0, 10.0, 20.0] and waits == sorted(waits) and waits[-1] == WAN_PROBE_BACKOFF
    assert lan.probe_due(now, 5.0) and lan.probe_due(now, 5.0) and b.probe_due(now, 5.0)
    # a new address in its record: tried at once
    assert table.fleet_seen(ids[0], [("203.0.113.9", 4801)]) is a and a.probe_due(now, 5.0)
    # tried and silent: one newcomer displaces it, the next waits WAN_TURNOVER
    b.probes = b.failures = 1
    assert table.fleet_seen(ids[2], [("198.51.100.2", 4801)]) is not None and table.get(ids[0]) is None
    table.get(ids[2]).probes = 1
    assert table.fleet_seen(ids[3], [("198.51.100.3", 4801)]) is None
    clock[0] += WAN_TURNOVER
    assert table.fleet_seen(ids[3], [("198.51.100.3", 4801)]) is not None
    assert sum(p.wan for p in table.peers.values()) == 2 and table.get(ids[4]) is lan
