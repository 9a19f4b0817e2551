"""The SD-wear budget: what Hearth itself may write to its card in a day. An SD card survives a few thousand
writes of each cell; a node that caches every stream its household watches would write its card out in a year.

What is counted is what the kernel counts for this process and its child processes (a transcoding job's process, a
live worker, the FFmpeg they run): /proc/PID/io's write_bytes less cancelled_write_bytes (every byte they caused to
be written to storage: block files, the catalog and its WAL, a job's scratch files, anything else), read by the
governor's service each tick (WriteCounter; new children are looked for each second). The kernel adds a child's
count to its parent's when the parent reaps it; until then a running child (a live worker runs for hours) is read
from its own file. When the day's budget is spent, the node stops caching blocks it fetches (may_cache) and takes no
new pieces for neighbours (may_accept_pieces) until the next day; it keeps serving what it holds. The day is the
local calendar day once the clock is synchronised; before that, each 24 hours of uptime is a day (a Pi without its
time yet cannot know when midnight is).
"""

import os
import time

from edge.errors import EdgeError

DAY = 86400.0


class WearBudgetSpent(EdgeError):
    """Today's SD-wear budget is spent: nothing more is cached until tomorrow."""


def process_writes(path: str = "/proc/self/io") -> int | None:
    """Bytes this process caused to be written to storage so far (None where the kernel does not say)."""
    try:
        with open(path) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["write_bytes"]) - int(fields.get("cancelled_write_bytes", 0))
    except (OSError, KeyError, ValueError):
        return None


def children(pid: int, proc: str = "/proc") -> list[int]:
    """The processes pid (any of its threads) started and has not reaped yet."""
    out = []
    try:
        tasks = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"{proc}/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):   # a thread that ended meanwhile; a kernel without the file
            continue
    return out


class WriteCounter:
    """sample(): bytes this process and its descendants have caused to be written so far, as one count that
    grows (WearBudget.observe takes it). Each descendant still running is read from its own /proc/PID/io; one
    its parent has reaped is in the parent's count from then (the kernel adds it), so what was read of it
    before is taken off, once. Descendants are read before their parents, so one reaped between the two
    readings is counted twice for that one sample at most, and taken off at the next. A descendant whose
    parent ended first (an orphan) leaves the tree uncounted from then: the count shrinks, and observe() counts
    only growth. Blocking (files in /proc): call it from a worker thread."""

    def __init__(self, pid: int | None = None, proc: str = "/proc"):
        self.pid = pid or os.getpid()
        self.proc = proc
        self._seen: dict[int, tuple[int, int]] = {}   # descendant -> (its parent, what it had written)
        self._reaped = 0    # what was read of descendants since reaped: their parents count it now

    def _tree(self) -> list[tuple[int, int]]:
        """[(descendant, its parent)], each after its own descendants."""
        out = []

        def walk(pid, depth):
            for child in children(pid, self.proc):
                if depth < 8:   # media children run FFmpeg at most; a deeper tree is not ours to walk
                    walk(child, depth + 1)
                out.append((child, pid))
        walk(self.pid, 0)
        return out

    def sample(self, walk: bool = True) -> int | None:
        """walk: look for new descendants (a walk of every thread's children); else read those known (cheap)."""
        now = {}
        known = [(pid, parent) for pid, (parent, _) in self._seen.items()]   # deepest first, as walked
        for pid, parent in self._tree() if walk else known:
            n = process_writes(f"{self.proc}/{pid}/io")
            if n is not None:
                now[pid] = (parent, n)
        own = process_writes(f"{self.proc}/{self.pid}/io")
        if own is None:
            return None
        for pid, (parent, n) in self._seen.items():
            if pid not in now and (parent == self.pid or parent in now):   # its parent (still here) reaped it
                self._reaped += n
        self._seen = now
        return own + sum(n for _, n in now.values()) - self._reaped


class WearBudget:
    """budget: bytes a day (0: no budget, never spent). Times come from clocks (tests pass ManualClocks)."""

    def __init__(self, budget: int, *, wall=time.time, monotonic=time.monotonic, synchronised=lambda: True):
        self.budget = budget
        self.wall = wall
        self.monotonic = monotonic
        self.synchronised = synchronised
        self.started = monotonic()
        self.written = 0          # bytes counted today
        self.day = self._day()
        self._last: int | None = None   # the last cumulative count read (process_writes)

    def _day(self):
        if self.synchronised():
            return ("date", time.strftime("%Y-%m-%d", time.localtime(self.wall())))
        return ("uptime", int((self.monotonic() - self.started) // DAY))

    def _roll(self) -> None:
        day = self._day()
        if day != self.day:
            self.day = day
            self.written = 0

    def count(self, n: int) -> None:
        """n more bytes written."""
        self._roll()
        self.written += n

    def observe(self, total: int | None) -> None:
        """A cumulative count (process_writes()): what it grew by since the last one is counted."""
        if total is None:
            return
        if self._last is not None and total >= self._last:
            self.count(total - self._last)
        self._last = total

    def spent(self) -> bool:
        self._roll()
        return bool(self.budget) and self.written >= self.budget

    def may_cache(self) -> bool:
        """Whether blocks fetched for readers may be written (cached) now."""
        return not self.spent()

    def may_accept_pieces(self) -> bool:
        """Whether pieces neighbours lend this node (erasure-coded shares) may be taken now."""
        return not self.spent()

    def check(self) -> None:
        """WearBudgetSpent, with what to do, when nothing more may be cached today."""
        if self.spent():
            raise WearBudgetSpent(
                f"today's SD-wear budget ({self.budget} bytes) is spent: this node caches nothing more until "
                "tomorrow and serves what it holds (raise wear_budget in hearth.toml to allow more)")
