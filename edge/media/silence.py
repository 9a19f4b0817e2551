"""When a live follower calls its source silent: a limit that adapts to how unevenly the source's messages come.

A source sends a heartbeat every 0.1 s besides its segments, so on a quiet machine the gaps between messages are
about 0.1 s; on a loaded one (the relay's agent waiting for a core, its encoder or browser busy) they bunch up
and gaps of several tenths come from a source that is alive. A fixed limit short enough to replace a dead source
within one segment (a third of a segment once) then calls a slow one dead again and again. So the limit is a
multiple of the high gaps seen lately (the 90th percentile, and the longest one the source came back from), never
under FLOOR and never over CEILING of a segment (the ceiling too while too few gaps were seen to tell): a dead
source is still replaced within one segment's duration (the limit, then one request to the publisher and a
subscription), a slow one is given the slack it has shown it needs. A source whose process ends is not waited
for at all: its connection closes (following.py watches for that). Pure logic on arrival times, unit tested on
generated loaded traces (tests/media/test_silence.py).
"""

from collections import deque

FLOOR = 0.3               # seconds: never less (heartbeats come 0.1 s apart)
CEILING = 0.6             # of a segment's duration: never more, so a dead source is replaced within one segment
MAX_SECONDS = 3.0         # and never more than this (long segments: the heartbeats still say it lives)
P90_TIMES = 3.0           # the limit: this many times the 90th percentile of the recent gaps ...
MAX_TIMES = 1.5           # ... and this many times the longest gap the source came back from
KEPT = 256                # gaps remembered (about 25 s of heartbeats: a stall once seen is slack for long)
LEARNING = 16             # gaps seen before the limit adapts (until then: the ceiling, as nothing is known yet)


class Arrivals:
    """The recent gaps between the messages of one source."""

    def __init__(self):
        self.gaps: deque[float] = deque(maxlen=KEPT)
        self.last: float | None = None

    def note(self, t: float) -> None:
        if self.last is not None and t >= self.last:
            self.gaps.append(t - self.last)
        self.last = t

    def limit(self, segment_seconds: float) -> float:
        return silence_limit(self.gaps, segment_seconds)


def silence_limit(gaps, segment_seconds: float) -> float:
    """Seconds without a message after which the source is silent."""
    ceiling = max(FLOOR, min(segment_seconds * CEILING, MAX_SECONDS))
    if len(gaps) < LEARNING:
        return ceiling
    ordered = sorted(gaps)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return max(FLOOR, min(ceiling, max(p90 * P90_TIMES, ordered[-1] * MAX_TIMES)))


def silent_at(arrivals, segment_seconds: float, first_gap: float, until: float) -> float | None:
    """When a follower that subscribed at 0 and heard messages at the times arrivals (sorted) calls the source
    silent, or None if it does not before until: how _listen decides, replayed on recorded times."""
    gauge = Arrivals()
    deadline = first_gap
    for t in arrivals:
        if t > deadline:
            return deadline
        gauge.note(t)
        deadline = t + gauge.limit(segment_seconds)
    return deadline if deadline <= until else None
