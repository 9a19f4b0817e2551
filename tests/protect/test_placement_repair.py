"""Placement, reputation and repair planning: distinct nodes and operators (three node ids of one operator never
hold two pieces of a segment), power-of-two choices steer to better nodes, new nodes get less until proven,
repair only below the threshold, only after repair_after, and a deterministic repairer when the owner is gone."""

import random
from collections import Counter

import pytest

from edge.protect import manifest, placement, repair
from edge.protect.manifest import ProtectError
from edge.protect.placement import Candidate, PlacementError
from edge.protect.reputation import PROVEN, Reputation

GiB = 1 << 30


def _proven():
    r = Reputation()
    for _ in range(PROVEN):
        r = r.record(True)
    return r


def test_reputation_forgets_and_disqualifies():
    r = _proven()
    assert r.proven and r.score == 1.0
    failing = r
    fails = 0
    while not failing.disqualified:
        failing = failing.record(False)
        fails += 1
    recovered = failing
    passes = 0
    while recovered.disqualified:
        recovered = recovered.record(True)
        passes += 1
    print(f"\nreputation: a proven node is disqualified after {fails} failures in a row, back after {passes} passes")
    assert 1 <= fails <= 8 and passes >= 1
    assert not Reputation().proven and not Reputation().disqualified


def test_one_operators_nodes_never_hold_two_pieces_of_a_segment():
    rng = random.Random(3)
    cands = [Candidate(f"op-node-{i}", operator="mallory", share=GiB, free=GiB) for i in range(3)]
    cands += [Candidate(f"node-{i}", share=GiB, free=GiB) for i in range(12)]
    for _ in range(2000):
        chosen = placement.choose(cands, 8, 1 << 20, rng)
        assert len(set(chosen)) == 8
        assert sum(1 for c in chosen if c.startswith("op-node")) <= 1
    only = [Candidate(f"op-node-{i}", operator="mallory", share=GiB, free=GiB) for i in range(5)]
    with pytest.raises(PlacementError, match="distinct operators"):
        placement.choose(only, 2, 1, rng)


def test_the_auto_choice_counts_operators_not_node_ids():
    # three node ids of one operator plus N others: k+m is chosen as for N+1 neighbours, and it can be placed
    rng = random.Random(6)
    for n in range(1, 21):
        cands = [Candidate(f"op-node-{i}", operator="mallory", share=GiB, free=GiB) for i in range(3)]
        cands += [Candidate(f"node-{i}", share=GiB, free=GiB) for i in range(n)]
        assert placement.domains(cands) == n + 1
        k, m = manifest.parse_protect("auto", placement.domains(cands))
        assert (k, m) == manifest.defaults(n + 1)
        chosen = placement.choose(cands, k + m, 1 << 20, rng)
        assert sum(1 for c in chosen if c.startswith("op-node")) <= 1
    # at N = 8, counting 11 node ids would ask for 4+4 = 8 pieces with no spare over 9 operators
    assert manifest.parse_protect("auto", 9) == (2, 2) and manifest.defaults(11) == (4, 4)
    # and an explicit 4+4 over 10 node ids of 8 operators is refused (8 pieces need 9 operators)
    with pytest.raises(ProtectError, match="this neighbourhood has 8"):
        manifest.parse_protect("4+4", placement.domains(cands[:3] + cands[3:10]))


def test_scores_steer_and_new_nodes_get_less():
    rng = random.Random(4)
    proven = _proven()
    cands = [Candidate(f"good-{i}", share=GiB, free=GiB, uptime=0.99, rtt=0.005, reputation=proven) for i in range(8)]
    cands += [Candidate(f"flaky-{i}", share=GiB, free=GiB, uptime=0.5, rtt=0.005, reputation=proven) for i in range(8)]
    cands += [Candidate(f"new-{i}", share=GiB, free=GiB, uptime=0.99, rtt=0.005) for i in range(8)]
    counts = Counter(node.split("-")[0] for _ in range(3000) for node in placement.choose(cands, 4, 1, rng))
    print(f"\npieces placed over 3000 segments of 4: {dict(counts)}")
    assert counts["good"] > counts["flaky"] and counts["good"] > counts["new"]
    assert counts["new"] > 0                  # still some: a new node can prove itself
    fresh = [Candidate(f"n{i}", share=GiB, free=GiB) for i in range(8)]   # a new neighbourhood: all equal
    even = Counter(n for _ in range(4000) for n in placement.choose(fresh, 2, 1, rng))
    assert max(even.values()) < 1.25 * min(even.values())


def test_full_nodes_are_skipped_and_place_pin_counts_space():
    rng = random.Random(5)
    cands = [Candidate("full", share=GiB, free=100), *(Candidate(f"n{i}", share=4 << 20, free=4 << 20)
                                                      for i in range(5))]
    plan = placement.place_pin(cands, [1 << 20] * 4, 4, rng, owner="n0")
    assert all("full" not in seg and "n0" not in seg for seg in plan)
    load = Counter(n for seg in plan for n in seg)
    assert all(v <= 4 for v in load.values())   # nobody over its 4 MiB share
    with pytest.raises(PlacementError):
        placement.place_pin(cands, [1 << 20] * 5, 4, rng, owner="n0")


def _states(online, now, offline_since=None):
    offline_since = offline_since or {}
    return {n: repair.NodeState(n not in offline_since, offline_since.get(n, now)) for n in online}


def test_repair_waits_for_repair_after_and_the_threshold():
    nodes = [f"n{i}" for i in range(12)]
    holders = [nodes[:8]]
    cands = [Candidate(n, share=GiB, free=GiB) for n in nodes]
    rng = random.Random(6)
    now = 100_000.0
    # one holder down for 5 h: health (7-4)/4 = 0.75, not below the threshold
    p = repair.plan(holders, 4, [1 << 20], _states(nodes, now, {"n0": now - 5 * 3600}), cands, rng, now)
    assert p.repairs == () and p.health == (0.75,)
    # two down, one only 1 h: that one still counts healthy
    p = repair.plan(holders, 4, [1 << 20], _states(nodes, now, {"n0": now - 5 * 3600, "n1": now - 3600}), cands,
                    rng, now)
    assert p.repairs == ()
    # two down past repair_after: both pieces get new holders outside the segment, each fetching 4 pieces
    p = repair.plan(holders, 4, [1 << 20], _states(nodes, now, {"n0": now - 5 * 3600, "n1": now - 4.5 * 3600}),
                    cands, rng, now)
    assert sorted(r.piece for r in p.repairs) == [0, 1]
    assert all(r.new_holder in nodes[8:] and len(r.sources) == 4 and r.bytes == 4 << 20 for r in p.repairs)
    assert len({r.new_holder for r in p.repairs}) == 2
    # a failed audit is unhealthy at once
    p = repair.plan(holders, 4, [1 << 20], _states(nodes, now), cands, rng, now, failed={(0, 2), (0, 5)})
    assert sorted(r.piece for r in p.repairs) == [2, 5]


def test_repair_waits_when_sources_are_offline():
    nodes = [f"n{i}" for i in range(6)]
    now = 50_000.0
    states = _states(nodes, now, {"n0": now - 9 * 3600, "n1": now - 60, "n2": now - 60})
    p = repair.plan([nodes[:4]], 2, [10], states, [Candidate(n, share=GiB, free=GiB) for n in nodes],
                    random.Random(1), now)
    # health (3-2)/2 = 0.5 but only n3 is online to serve: wait
    assert p.repairs == () and p.waiting == (0,)


def test_the_repairer_is_deterministic():
    nodes = [f"n{i}" for i in range(6)]
    now = 10.0 ** 6
    states = _states(nodes + ["owner"], now, {"owner": now - 10 * 3600})
    first = repair.repairer(b"root", "owner", [nodes[:4]], states, now)
    assert first in nodes[:4]
    assert first == repair.repairer(b"root", "owner", [list(reversed(nodes[:4]))], dict(reversed(states.items())), now)
    assert repair.repairer(b"root", "owner", [nodes[:4]], _states(nodes + ["owner"], now), now) == "owner"
    states[first] = repair.NodeState(False, now - 10)
    assert repair.repairer(b"root", "owner", [nodes[:4]], states, now) not in ("owner", first)


def test_health():
    assert repair.health(8, 4, 8) == 1.0 and repair.health(4, 4, 8) == 0.0 and repair.health(6, 4, 8) == 0.5
    assert repair.health(2, 2, 2) == 1.0 and repair.health(1, 1, 1) == 1.0 and repair.health(0, 1, 1) < 0.75
