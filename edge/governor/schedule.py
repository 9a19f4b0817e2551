"""Schedules by hour and weekday: what share of the WAN caps applies now.

The setting `limit_schedule` is a list of entries, the first that matches the local time wins; a time no entry
matches gets the caps in full:

    limit_schedule = ["01:00-07:00 100%",          # the night: everything the caps allow
                      "mon-fri 18:00-23:00 20%",   # weekday evenings: a fifth
                      "sat,sun 09:00-23:00 50%",
                      "07:00-18:00 1M"]            # or a rate: at most 1 MB/s (and never above the cap)

An entry is [days] HH:MM-HH:MM SHARE: days are mon..sun, as a comma list or a range (mon-fri; none: every day),
the hours may wrap past midnight (22:00-02:00: the part after midnight belongs to the day it started on), and
the share is a percentage of the cap or a rate (edge/units.py: "500K", "2.5M"). A share applies to the WAN caps
(upload and download); with no cap set a percentage has nothing to scale and only a rate limits.

Until the clock is synchronised (edge/governor/clocksync.py) the most conservative entry applies all day:
the smallest percentage and the smallest rate of the table (and the full caps only if the table is empty).
"""

import dataclasses
import re

from edge.units import parse_rate

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTRY = re.compile(r"(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d{1,2}:\d\d)\s*-\s*(?P<end>\d{1,2}:\d\d)\s+"
                    r"(?P<share>\S+)\Z")
FORM = "[days] HH:MM-HH:MM SHARE, e.g. \"mon-fri 18:00-23:00 20%\" or \"01:00-07:00 2.5M\""


class ScheduleError(ValueError):
    """An entry of limit_schedule cannot be read; the message names it and the form."""


@dataclasses.dataclass(frozen=True)
class Share:
    """What applies: a fraction of the cap (1.0: all of it) and at most a rate (0: no rate of its own)."""
    fraction: float = 1.0
    rate: int = 0

    def apply(self, cap: int) -> int:
        """The cap (bytes/s, 0: none) under this share."""
        scaled = int(cap * self.fraction) if cap else 0
        if self.rate:
            scaled = min(scaled, self.rate) if scaled else self.rate
        if cap and not scaled:   # a share of 0% still lets a trickle through: the node stays reachable
            scaled = 1024
        return scaled


FULL = Share()


@dataclasses.dataclass(frozen=True)
class Entry:
    days: frozenset[int]   # 0 = Monday
    start: int             # minutes after midnight
    end: int
    share: Share
    text: str

    def matches(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # past midnight: the evening part is on its own day, the morning part on the next
        return ((weekday in self.days and minute >= self.start)
                or ((weekday - 1) % 7 in self.days and minute < self.end))


def _minutes(text: str, entry: str) -> int:
    hours, minutes = (int(p) for p in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ScheduleError(f"limit_schedule: {entry!r}: {text} is not a time of day; write {FORM}")
    return hours * 60 + minutes


def _days(text: str | None, entry: str) -> frozenset[int]:
    if not text:
        return frozenset(range(7))
    out = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ScheduleError(f"limit_schedule: {entry!r}: {part!r} is not a day or range of days "
                                f"({', '.join(DAYS)}); write {FORM}")
        a, b = DAYS.index(first), DAYS.index(last or first)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


def parse_entry(text: str) -> Entry:
    m = _ENTRY.match(text.strip().lower())
    if not m:
        raise ScheduleError(f"limit_schedule: {text!r} is not an entry; write {FORM}")
    start, end = _minutes(m["start"], text), _minutes(m["end"], text)
    if start == end:
        raise ScheduleError(f"limit_schedule: {text!r} covers no time (start = end); write {FORM}")
    share_text = m["share"]
    if share_text.endswith("%"):
        try:
            percent = float(share_text[:-1])
        except ValueError:
            percent = -1.0
        if not 0 <= percent <= 100:
            raise ScheduleError(f"limit_schedule: {text!r}: {share_text} is not a percentage from 0 to 100")
        share = Share(fraction=percent / 100)
    else:
        try:
            share = Share(rate=parse_rate(share_text))
        except ValueError as exc:
            raise ScheduleError(f"limit_schedule: {text!r}: {exc}") from None
    return Entry(_days(m["days"], text), start, end % (24 * 60) if end == 24 * 60 else end, share, text)


class Schedule:
    def __init__(self, entries=()):
        """entries: the setting's strings (ScheduleError naming a bad one)."""
        self.entries = tuple(parse_entry(e) for e in entries)
        fractions = [e.share.fraction for e in self.entries]
        rates = [e.share.rate for e in self.entries if e.share.rate]
        self.conservative = Share(min(fractions, default=1.0), min(rates, default=0))

    def share(self, local_time, synchronised: bool = True) -> Share:
        """The share in force at local_time (a time.struct_time, time.localtime's), or the most conservative
        one while the clock is not synchronised."""
        if not synchronised:
            return self.conservative
        weekday, minute = local_time.tm_wday, local_time.tm_hour * 60 + local_time.tm_min
        for entry in self.entries:
            if entry.matches(weekday, minute):
                return entry.share
        return FULL
