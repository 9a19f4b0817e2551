"""The publisher's relay tree of one live stream: who subscribes to whom.

The publisher takes up to `direct` subscribers itself; every other node is pointed at a subscribed node that
relays (re-publishes what it receives) and has room left (the capacity it reported: what its upload limit
allows). A node is never pointed into its own subtree (no cycle), shallower relays first (fewer hops, less
latency). A node reports the sources it stopped hearing from (dead): they leave the tree and their children are
placed again when they ask. A node that does not ask again within `lease` seconds leaves it too.

Thread-safe: the transport's serving thread answers LiveWant through assign(), the Trio thread reads stats().
"""

import threading
import time
from dataclasses import dataclass

SELF = ""                 # the publisher itself, as a parent
LEASE = 15.0              # seconds a member stays without asking again
ASK_EVERY = 5.0           # what members are told: ask again this often
MAX_MEMBERS = 256


@dataclass
class Member:
    node: str
    parent: str | None = None     # SELF, another member's node, or None (to be placed)
    port: int = 0                  # its PUB port (0: it relays to no one)
    capacity: int = 0              # how many it may relay to
    heard: float = 0.0


class RelayTree:
    def __init__(self, direct: int = 1, lease: float = LEASE, clock=time.monotonic):
        self.direct = direct
        self.lease = lease
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.lock = threading.Lock()
        self.moved = 0             # placements that changed a member's parent (a dead relay, a new member)

    def assign(self, node: str, port: int = 0, capacity: int = 0, dead=()) -> str:
        """The parent node must subscribe to (SELF: the publisher)."""
        with self.lock:
            now = self.clock()
            for n, m in list(self.members.items()):
                if now - m.heard > self.lease:
                    self._drop(n)
            for d in dead:
                if d != node:
                    self._drop(d)
            m = self.members.get(node)
            if m is None:
                if len(self.members) >= MAX_MEMBERS:
                    return SELF        # no room to track it: served directly, as before the tree
                m = self.members[node] = Member(node)
            m.port, m.capacity, m.heard = port, capacity, now
            if m.parent is not None and m.parent not in dead and (m.parent == SELF or m.parent in self.members):
                return m.parent
            parent = self._place(node)
            m.parent = parent
            self.moved += 1
            return parent

    def _drop(self, node: str) -> None:
        self.members.pop(node, None)
        for m in self.members.values():
            if m.parent == node:
                m.parent = None

    def _children(self, parent: str, besides: str) -> int:
        return sum(1 for m in self.members.values() if m.parent == parent and m.node != besides)

    def _depth(self, node: str, avoid: str) -> int | None:
        """Hops from the publisher to node; None where node hangs below avoid, or is not placed."""
        depth, seen = 0, set()
        while node != SELF:
            if node == avoid or node in seen:
                return None
            seen.add(node)
            m = self.members.get(node)
            if m is None or m.parent is None:
                return None
            node, depth = m.parent, depth + 1
        return depth

    def _place(self, node: str) -> str:
        if self._children(SELF, node) < self.direct:
            return SELF
        best, best_depth = SELF, None
        for m in self.members.values():
            if m.node == node or not m.port or self._children(m.node, node) >= m.capacity:
                continue
            depth = self._depth(m.node, node)
            if depth is not None and (best_depth is None or depth < best_depth):
                best, best_depth = m.node, depth
        return best      # no relay with room: the publisher serves it (over `direct`, better than no picture)

    def stats(self) -> dict:
        with self.lock:
            direct = sum(1 for m in self.members.values() if m.parent == SELF)
            return {"members": len(self.members), "direct": direct, "moved": self.moved}
