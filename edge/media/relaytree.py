"""The publisher's relay tree of one live stream: who subscribes to whom.

The publisher takes up to `direct` subscribers itself; every other node is pointed at a subscribed node that
relays (re-publishes what it receives) and has room left (the capacity it reported: what its upload limit
allows). A node is never pointed into its own subtree (no cycle), shallower relays first (fewer hops, less
latency). A node that does not ask again within `lease` seconds leaves the tree; its children are placed again
when they ask.

A node reports the sources it stopped hearing from (dead). A report alone does not take a relay out of the tree:
under load a live relay falls silent for a moment, and dropping it moved all its children onto the publisher and
back (the flapping that once took the publisher's upload with three viewers to 1.8 times that with one). Instead
the reporter is given a fallback for itself (the publisher, or another relay with room outside the suspect's
subtree) while its place under the relay is kept; the relay's own lease says whether it lives: a reported relay
that asks again is alive, its reports are cleared and its children sent back to it at their next request (they
were told to ask every ASK_EVERY s); a reported relay that misses its renewal (ASK_EVERY + GRACE s) is dead and
leaves the tree at once. Hysteresis: a node that reports the same live relay STRIKES times within STRIKE_WINDOW s
is placed away from it for good (that relay stays for the others).

Thread-safe: the transport's serving thread answers LiveWant through assign(), the Trio thread reads stats().
"""

import threading
import time
from dataclasses import dataclass

SELF = ""                 # the publisher itself, as a parent
LEASE = 15.0              # seconds a member stays without asking again
ASK_EVERY = 5.0           # what members are told: ask again this often
MAX_MEMBERS = 256
GRACE = 3.0               # seconds past ASK_EVERY a reported relay has to ask again (a request may take 3 s)
STRIKES = 3               # reports of one live relay by one node ...
STRIKE_WINDOW = 30.0      # ... within this many seconds: that node is placed away from it
MAX_AVOIDED = 8           # relays one node is kept away from


@dataclass
class Member:
    node: str
    parent: str | None = None     # SELF, another member's node, or None (to be placed)
    port: int = 0                  # its PUB port (0: it relays to no one)
    capacity: int = 0              # how many it may relay to
    heard: float = 0.0
    fallback: str | None = None    # where it follows while its parent stands reported by it
    avoid: tuple = ()              # relays it reported again and again: never its parent


class RelayTree:
    def __init__(self, direct: int = 1, lease: float = LEASE, clock=time.monotonic):
        self.direct = direct
        self.lease = lease
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.lock = threading.Lock()
        self.moved = 0             # placements that changed a member's parent (a dead relay, a new member)
        self.reports: dict[str, dict[str, float]] = {}      # relay -> {reporter: when}, until it asks again
        self.strikes: dict[tuple[str, str], list[float]] = {}   # (reporter, relay) -> when it reported it
        self.fallbacks = 0         # reporters given a source of their own while their relay was suspect

    def assign(self, node: str, port: int = 0, capacity: int = 0, dead=()) -> str:
        """The node node must subscribe to (SELF: the publisher): its parent, or its fallback while it reports
        its parent silent and the parent has not shown it lives."""
        with self.lock:
            now = self.clock()
            for n, m in list(self.members.items()):
                lapsed = now - m.heard > (self.lease if n not in self.reports else ASK_EVERY + GRACE)
                if lapsed:
                    self._drop(n)
            m = self.members.get(node)
            if m is None:
                if len(self.members) >= MAX_MEMBERS:
                    return SELF        # no room to track it: served directly, as before the tree
                m = self.members[node] = Member(node)
            m.port, m.capacity, m.heard = port, capacity, now
            if self.reports.pop(node, None):          # a reported relay asks again: it lives
                for child in self.members.values():
                    if child.parent == node:
                        child.fallback = None
            for d in dead:
                if d != node and d in self.members:
                    self._report(m, d, now)
            if m.parent is None or not (m.parent == SELF or m.parent in self.members) or m.parent in m.avoid:
                m.parent, m.fallback = self._place(node, m.avoid), None
                self.moved += 1
            if m.parent != SELF and node in self.reports.get(m.parent, {}):
                if m.fallback is None or not (m.fallback == SELF or m.fallback in self.members):
                    m.fallback = self._place(node, (m.parent,) + m.avoid, fallback=True)
                    self.fallbacks += 1
                return m.fallback
            m.fallback = None
            return m.parent

    def _report(self, m: Member, relay: str, now: float) -> None:
        """m says relay went silent: noted until relay asks again (or leaves); the STRIKES-th time within
        STRIKE_WINDOW m is placed away from it."""
        self.reports.setdefault(relay, {})[m.node] = now
        key = (m.node, relay)
        times = [t for t in self.strikes.get(key, []) if now - t < STRIKE_WINDOW] + [now]
        self.strikes[key] = times[-STRIKES:]
        if len(times) >= STRIKES and m.parent == relay and len(m.avoid) < MAX_AVOIDED:
            m.avoid += (relay,)
            self.reports[relay].pop(m.node, None)
            m.parent = None             # placed again below, outside relay's subtree

    def _drop(self, node: str) -> None:
        self.members.pop(node, None)
        self.reports.pop(node, None)
        for reports in self.reports.values():
            reports.pop(node, None)
        for key in [k for k in self.strikes if node in k]:
            del self.strikes[key]
        for m in self.members.values():
            if m.parent == node:
                m.parent = None
            if m.fallback == node:
                m.fallback = None

    def _children(self, parent: str, besides: str) -> int:
        """Members parent sends to: its children, and those on it as their fallback (while their own relay is
        suspect they load it the same)."""
        return sum(1 for m in self.members.values() if parent in (m.parent, m.fallback) and m.node != besides)

    def _depth(self, node: str, avoid) -> int | None:
        """Hops from the publisher to node; None where node is or hangs below one of avoid, or is not placed."""
        depth, seen = 0, set()
        while node != SELF:
            if node in avoid or node in seen:
                return None
            seen.add(node)
            m = self.members.get(node)
            if m is None or m.parent is None:
                return None
            node, depth = m.parent, depth + 1
        return depth

    def _place(self, node: str, avoid=(), fallback: bool = False) -> str:
        """A parent for node: the publisher while it takes fewer than `direct`, else the shallowest relay with room
        outside node's subtree and the subtrees of avoid. A fallback (a stopgap while its parent is suspect) is
        the publisher only where no relay has room."""
        if not fallback and self._children(SELF, node) < self.direct:
            return SELF
        best, best_depth = SELF, None
        for m in self.members.values():
            if m.node == node or not m.port or self._children(m.node, node) >= m.capacity:
                continue
            depth = self._depth(m.node, {node, *avoid})
            if depth is not None and (best_depth is None or depth < best_depth):
                best, best_depth = m.node, depth
        return best      # no relay with room: the publisher serves it (over `direct`, better than no picture)

    def stats(self) -> dict:
        with self.lock:
            direct = sum(1 for m in self.members.values() if m.parent == SELF)
            return {"members": len(self.members), "direct": direct, "moved": self.moved,
                    "fallbacks": self.fallbacks, "suspect": len(self.reports)}
