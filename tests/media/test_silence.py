"""When a live follower calls its source silent (edge/media/silence.py), replayed on arrival times, together with
what the publisher's relay tree (edge/media/relaytree.py) then does: a slow but live relay is kept, a dead one
replaced within one segment. The traces are generated (seeded): heartbeats 0.1 s apart with the jitter of a
loaded machine (bunched messages after stalls of 0.3 to 0.5 s, as the flapping relays showed under load)."""

import random

import pytest

from edge.media.relaytree import ASK_EVERY, SELF, RelayTree
from edge.media.silence import FLOOR, silence_limit, silent_at
from tests.clock import ManualClock

SEGMENT = 1.0


def loaded_trace(seconds: float, seed: int = 7) -> list[float]:
    """Message arrival times of a live source on a loaded machine: 0.1 s heartbeats with jitter, a segment each
    second, and every 1 to 2 s a stall of 0.30 to 0.50 s after which what waited comes in a bunch."""
    rng = random.Random(seed)
    t, out, next_stall = 0.05, [], 1.0
    while t < seconds:
        out.append(t)
        if t >= next_stall:                                 # a gap of 0.30 to 0.50 s, then the bunch that waited
            t += rng.uniform(0.30, 0.50)
            out.extend([t, t + 0.002])
            t += 0.004
            next_stall = t + rng.uniform(1.0, 2.0)
        t += 0.1 + rng.uniform(-0.03, 0.03)
    return sorted(out)


def old_silent_at(arrivals, first_gap, until):
    """The rule this replaced: a third of a segment, at least 0.3 s, whatever the source did before."""
    limit, deadline = max(0.3, SEGMENT / 3), first_gap
    for t in arrivals:
        if t > deadline:
            return deadline
        deadline = t + limit
    return deadline if deadline <= until else None


def test_a_slow_but_live_source_is_not_called_silent():
    trace = loaded_trace(60.0)
    assert old_silent_at(trace, 3.0, 60.0) is not None         # the fixed limit called this live source dead
    assert silent_at(trace, SEGMENT, 3.0, 60.0) is None
    quiet = [0.05 + 0.1 * i for i in range(600)]
    assert silent_at(quiet, SEGMENT, 3.0, 60.0) is None
    gaps = [b - a for a, b in zip(quiet, quiet[1:])]
    assert silence_limit(gaps, SEGMENT) == pytest.approx(FLOOR)  # a quiet source: the short limit


def test_a_dead_source_is_called_silent_within_one_segment():
    for seed in range(20):
        trace = loaded_trace(60.0, seed)
        died = trace[len(trace) // 2]
        called = silent_at([t for t in trace if t <= died], SEGMENT, 3.0, 60.0)
        print(f"seed {seed}: silent {called - died:.2f} s after the last message")
        assert called is not None and called - died <= 0.6 * SEGMENT + 1e-9
    # however long the stalls it came back from, the limit stays within the segment
    assert silence_limit([0.1] * 10 + [5.0], SEGMENT) == 0.6 * SEGMENT
    assert silence_limit([0.1] * 10 + [5.0], 10.0) == 3.0


def test_a_reported_relay_that_lives_is_kept_and_its_child_returns_to_it():
    clock = ManualClock()
    tree = RelayTree(direct=1, clock=clock)
    assert tree.assign("b", 5000, 2) == SELF
    assert tree.assign("c", 5001, 2) == "b"
    assert tree.assign("d", 5002, 2) == "b"
    clock.advance(1)
    assert tree.assign("c", 5001, 2, dead=("b",)) == SELF      # c's fallback, for itself only
    assert "b" in tree.members and tree.members["c"].parent == "b"
    assert tree.assign("d", 5002, 2) == "b"                    # d is not moved
    clock.advance(ASK_EVERY)
    assert tree.assign("c", 5001, 2) == SELF                   # b has not shown it lives yet
    assert tree.assign("b", 5000, 2) == SELF                   # b asks again: alive
    assert tree.assign("c", 5001, 2) == "b"                    # c goes back to it
    assert tree.stats() == {"members": 3, "direct": 1, "moved": 3, "fallbacks": 1, "suspect": 0}


def test_a_dead_relay_is_replaced_within_one_segment_and_leaves_once_it_misses_its_renewal():
    clock = ManualClock()
    tree = RelayTree(direct=1, clock=clock)
    tree.assign("b", 5000, 2)
    tree.assign("c", 5001, 2)
    tree.assign("d", 5002, 2)
    trace = loaded_trace(10.0)
    died = trace[-1]                                            # b is killed after its last message ...
    called = silent_at(trace, SEGMENT, 3.0, 20.0)
    clock.advance(died)
    for node, port in (("b", 5000), ("c", 5001), ("d", 5002)):   # ... just after all renewed their lease
        tree.assign(node, port, 2)
    clock.advance(called - died)
    assert tree.assign("c", 5001, 2, dead=("b",)) == SELF      # c follows the publisher from the report on
    assert tree.assign("d", 5002, 2, dead=("b",)) == SELF
    print(f"the dead relay's children follow the publisher {called - died:.2f} s after its last message")
    assert called - died <= SEGMENT
    clock.advance(ASK_EVERY + 3.1)                             # b missed its renewal: it leaves the tree
    assert tree.assign("c", 5001, 2) == SELF
    assert "b" not in tree.members and tree.stats()["suspect"] == 0
    assert tree.assign("d", 5002, 2) == "c"                    # placed again: the tree rebuilt without b


def test_a_node_that_reports_a_live_relay_again_and_again_is_placed_away_from_it():
    clock = ManualClock()
    tree = RelayTree(direct=1, clock=clock)
    tree.assign("b", 5000, 2)
    tree.assign("e", 5004, 2)            # over direct: below b, a relay too
    tree.assign("c", 5001, 2)
    assert tree.members["c"].parent == "b"
    for _ in range(2):
        clock.advance(1)
        assert tree.assign("c", 5001, 2, dead=("b",)) == SELF
        tree.assign("b", 5000, 2)                              # b lives
        assert tree.assign("c", 5001, 2) == "b"
    clock.advance(1)
    assert tree.assign("c", 5001, 2, dead=("b",)) == SELF      # the third time in 30 s: away from b for good
    assert tree.members["c"].parent == SELF and tree.members["c"].avoid == ("b",)
    tree.assign("b", 5000, 2)
    assert tree.assign("c", 5001, 2) == SELF
