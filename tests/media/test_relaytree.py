"""The publisher's relay tree of a live stream (edge/media/relaytree.py): pure logic on a moved clock."""

from edge.media.relaytree import SELF, RelayTree
from tests.clock import ManualClock


def test_the_publisher_takes_direct_subscribers_then_points_at_relays_with_room():
    tree = RelayTree(direct=1)
    assert tree.assign("b", port=5000, capacity=2) == SELF
    assert tree.assign("c", port=5001, capacity=2) == "b"
    assert tree.assign("d", port=5002, capacity=2) == "b"
    assert tree.assign("e", port=5003, capacity=2) == "c"      # b is full: the next shallowest relay
    assert tree.assign("f", port=0, capacity=0) in ("c", "d")
    # asking again (the lease) keeps a member where it is
    assert tree.assign("c", port=5001, capacity=2) == "b"
    assert tree.stats() == {"members": 5, "direct": 1, "moved": 5, "fallbacks": 0, "suspect": 0}


def test_a_dead_relay_is_bypassed_and_no_member_is_placed_below_itself():
    clock = ManualClock()
    tree = RelayTree(direct=1, clock=clock)
    tree.assign("b", 5000, 2)
    tree.assign("c", 5001, 2)
    tree.assign("d", 5002, 2)
    assert tree.assign("c", 5001, 2, dead=("b",)) == SELF     # c reports b silent: c falls back to the publisher
    clock.advance(9)                                           # b does not ask again: dead, it leaves
    assert tree.assign("c", 5001, 2) == SELF
    assert "b" not in tree.members
    assert tree.assign("d", 5002, 2, dead=("b",)) == "c"
    # c's source went silent too (say A's link): c must not be put under d, which hangs below c
    tree.members["c"].parent = None
    tree.direct = 0
    assert tree.assign("c", 5001, 2) == SELF                   # no relay outside its own subtree: the publisher
    assert tree.members["d"].parent == "c"


def test_a_member_that_stops_asking_leaves_the_tree():
    clock = ManualClock()
    tree = RelayTree(direct=1, lease=15.0, clock=clock)
    tree.assign("b", 5000, 2)
    tree.assign("c", 5001, 2)
    clock.advance(10)
    tree.assign("c", 5001, 2)
    clock.advance(10)                                          # b silent for 20 s, c for 10
    assert tree.assign("d", 5002, 2) == SELF                   # b expired: its place is free
    assert "b" not in tree.members and tree.members["c"].parent is None   # b's child is to be placed again
    assert tree.assign("c", 5001, 2) == "d"


def test_a_node_that_does_not_relay_is_never_a_source():
    tree = RelayTree(direct=1)
    tree.assign("b", port=0, capacity=0)
    assert tree.assign("c", port=5001, capacity=2) == SELF      # over `direct`, but no one can relay
