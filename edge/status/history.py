"""Bandwidth now and over the last 24 hours: served and fetched bytes, by link (LAN, WAN).

A Meter samples the node's cumulative byte counters (`totals()`, see traffic_totals) every SAMPLE_EVERY seconds;
the difference since the last sample goes into the current minute's bucket of a History, a ring of at most
MINUTES buckets (one day), and into the rates shown as "now". Buckets are counted on the monotonic clock, so a
clock set at boot (a Pi has no RTC) neither loses nor duplicates minutes; their wall-clock times are worked out
when shown. The history lives in memory: a node that restarts starts a new one.
"""

import collections
import time

from edge.governor.caps import DOWN, UP
from edge.governor.links import LAN, WAN

MINUTES = 24 * 60        # buckets kept: one a minute for a day
SAMPLE_EVERY = 2.0       # seconds between samples of the counters
SERIES = ("served_lan", "served_wan", "fetched_lan", "fetched_wan")


class History:
    """Per-minute byte counts of each of SERIES, the last `minutes` minutes. Bounded: a deque of fixed length."""

    def __init__(self, minutes: int = MINUTES, clock=time.monotonic, wall=time.time):
        self.clock, self.wall = clock, wall
        self.start = clock()
        self.buckets: collections.deque = collections.deque(maxlen=minutes)   # [minute index, *SERIES]

    def __len__(self) -> int:
        return len(self.buckets)

    def add(self, deltas: dict, now: float | None = None) -> None:
        """Count deltas ({series: bytes}) in the minute of now (the monotonic clock); minutes with no sample
        between two buckets are added empty, so the ring always spans the last len(self) minutes."""
        minute = int(((self.clock() if now is None else now) - self.start) // 60)
        buckets = self.buckets
        if buckets and minute < buckets[-1][0]:
            minute = buckets[-1][0]          # a clock that went back (only in tests): the current bucket
        first = buckets[-1][0] + 1 if buckets else minute
        for m in range(max(first, minute - buckets.maxlen + 1), minute + 1):
            buckets.append([m] + [0] * len(SERIES))
        bucket = buckets[-1]
        for i, name in enumerate(SERIES, 1):
            bucket[i] += deltas.get(name, 0)

    def series(self, since: float | None = None) -> dict:
        """{"step": 60, "series": SERIES, "rows": [[wall-clock start of the minute, *bytes], ...]} oldest first;
        with since (a row's time a page already has), only the rows from that minute on (a poll sends the
        minutes that changed, not the day)."""
        offset = self.wall() - self.clock() + self.start    # wall-clock time of minute 0
        rows = [[round(offset + b[0] * 60), *b[1:]] for b in self.buckets]
        if since is not None:
            rows = [r for r in rows if r[0] >= since - 30]   # half a minute's slack: the wall clock may be set
        return {"step": 60, "series": list(SERIES), "rows": rows, "whole": since is None}


class Meter:
    """Turns cumulative byte counters into the History and rates now. totals() -> {series: bytes so far}."""

    def __init__(self, totals, history: History | None = None, clock=time.monotonic):
        self.totals, self.clock = totals, clock
        self.history = history if history is not None else History(clock=clock)
        self._last = dict(totals())
        self._at = clock()
        self.rates = {name: 0.0 for name in SERIES}   # bytes a second over the last sample
        self.history.add({}, self._at)                # the minute the agent started, from the start

    def sample(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        current = self.totals()
        # a counter only goes up; one that went down (a test that replaced it) counts as nothing, not negative
        deltas = {k: max(0, current.get(k, 0) - self._last.get(k, 0)) for k in SERIES}
        elapsed = now - self._at
        if elapsed > 0:
            self.rates = {k: deltas[k] / elapsed for k in SERIES}
        self.history.add(deltas, now)
        self._last, self._at = dict(current), now


def traffic_totals(governor) -> dict:
    """The node's cumulative bytes by series: what paid through the governor's lanes (edge/governor/caps.py), by
    direction and the peer's link class (the transport's blocks and the gateway's bodies up, fetches down). The
    one place the page's bandwidth figures are read from."""
    carried = governor.caps.carried()
    return {"served_lan": carried[(UP, LAN)], "served_wan": carried[(UP, WAN)],
            "fetched_lan": carried[(DOWN, LAN)], "fetched_wan": carried[(DOWN, WAN)]}
