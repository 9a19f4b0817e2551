"""The governor's state and its tick: the caps by link class, the schedule, the back-off and the SD-wear budget
together, and the figures `hearth status`, /metrics and the status page show. tick() is a function of the
signal and the clocks it is given (tests move ManualClocks); edge/governor/service.py calls it.
"""

import collections
import time

from edge.governor import backoff
from edge.governor.caps import DOWN, KEYS, UP, Caps
from edge.governor.clocksync import clock_synchronised
from edge.governor.links import LAN, WAN, LinkClassifier
from edge.governor.schedule import Schedule
from edge.governor.wear import WearBudget

EVENTS = 256       # back-off events kept for the status page (each a start time and its length)
RATE_WINDOW = 1.0  # seconds the rates shown are measured over


class Governor:
    def __init__(self, *, classifier: LinkClassifier, wan_up: int = 0, lan_up: int = 0, wan_down: int = 0,
                 lan_down: int = 0, schedule: Schedule | None = None, wan_floor: int = 64 * 1024,
                 wear_budget: int = 0, clock=time.monotonic, wall=time.time, synchronised=None):
        """synchronised(): whether the wall clock is set (edge/governor/clocksync.py unless given)."""
        self.clock = clock
        self.wall = wall
        self._synced_now = None   # within a tick: the clock's state read once for the tick
        self.synchronised = synchronised or (lambda: clock_synchronised(wall))
        self.classifier = classifier
        self.caps = Caps(classifier, wan_up=wan_up, lan_up=lan_up, wan_down=wan_down, lan_down=lan_down,
                         clock=clock)
        self.schedule = schedule or Schedule()
        self.floor = wan_floor
        self.wear = WearBudget(wear_budget, wall=wall, monotonic=clock, synchronised=self._synced)
        self.state = backoff.State()
        self.signal = "none"          # which household signal the service uses
        self.household = 0.0          # the household's uplink rate last measured (bytes/s), where measured
        self.events: collections.deque = collections.deque(maxlen=EVENTS)   # [wall start, seconds or None]
        self.share = self.schedule.share(time.localtime(wall()), self._synced())
        self._last = clock()
        self._seen = collections.deque([(self._last, self.caps.carried())])   # for the rates shown

    def _synced(self) -> bool:
        return self._synced_now if self._synced_now is not None else self.synchronised()

    # what transfers ask ---------------------------------------------------------------------------------------

    def upload_for(self, ip: str | None):
        return self.caps.upload_for(ip)

    def download_for(self, ip: str | None):
        return self.caps.download_for(ip)

    def own_wan(self) -> tuple[int, int]:
        """(bytes sent to WAN peers, bytes received from them) so far: what the household signals subtract."""
        carried = self.caps.carried()
        return carried[(UP, WAN)], carried[(DOWN, WAN)]

    # the tick ----------------------------------------------------------------------------------------------

    def tick(self, busy: bool | None) -> bool:
        """Work out the rates in force now, given whether the household is busy (None: no signal, or it cannot
        tell yet, which changes nothing). True when a back-off began with this tick."""
        now = self.clock()
        dt, self._last = now - self._last, now
        self._synced_now = self.synchronised()
        try:
            self.share = self.schedule.share(time.localtime(self.wall()), self._synced_now)
            self._measure(now)
            configured = self.caps.configured
            wan_up = self.share.apply(configured[(UP, WAN)])
            was = self.state.backing_off
            if busy is not None:
                self.state = backoff.step(self.state, now=now, dt=dt, busy=busy, cap=wan_up, floor=self.floor,
                                          sent=self.rate(UP, WAN))
            began = self.state.backing_off and not was
            if began:
                self.events.append([self.wall(), None])
            elif was and not self.state.backing_off and self.events:
                self.events[-1][1] = round(self.wall() - self.events[-1][0], 1)
            self.caps.set_rates({(UP, WAN): backoff.allowed(self.state, wan_up),
                                 (DOWN, WAN): self.share.apply(configured[(DOWN, WAN)]),
                                 (UP, LAN): configured[(UP, LAN)], (DOWN, LAN): configured[(DOWN, LAN)]})
            return began
        finally:
            self._synced_now = None

    def _measure(self, now: float) -> None:
        seen = self._seen
        seen.append((now, self.caps.carried()))
        while len(seen) > 2 and now - seen[1][0] >= RATE_WINDOW:
            seen.popleft()

    def rate(self, direction: str, link: str) -> float:
        """Bytes per second carried in this direction with this link class over the last second or so."""
        (t0, first), (t1, last) = self._seen[0], self._seen[-1]
        return (last[(direction, link)] - first[(direction, link)]) / (t1 - t0) if t1 > t0 else 0.0

    # what it shows -------------------------------------------------------------------------------------------

    def figures(self) -> dict:
        """For `hearth status`, the status page and /metrics."""
        caps, carried = self.caps.rates(), self.caps.carried()
        return {
            "clock_synchronised": self._synced(),
            "schedule_share": {"fraction": self.share.fraction, "rate": self.share.rate},
            "caps": {f"{d}_{c}": caps[(d, c)] for d, c in KEYS},
            "configured": {f"{d}_{c}": self.caps.configured[(d, c)] for d, c in KEYS},
            "rates": {f"{d}_{c}": round(self.rate(d, c)) for d, c in KEYS},
            "carried": {f"{d}_{c}": carried[(d, c)] for d, c in KEYS},
            "backoff": {"signal": self.signal, "active": self.state.backing_off, "rate": round(self.state.rate),
                        "floor": self.floor, "events": self.state.events, "household": round(self.household),
                        "recent": [list(e) for e in list(self.events)[-20:]]},
            "wear": {"budget": self.wear.budget, "written_today": self.wear.written, "spent": self.wear.spent(),
                     "day": self.wear.day[0]},
        }

    def register(self, registry) -> None:
        """The governor's gauges in the agent's counter registry (hearth_governor_… on /metrics)."""
        for d, c in KEYS:
            registry.gauge(f"governor_cap_{d}_{c}_bytes_per_second", f"the {c.upper()} {d}load cap in force "
                           "(0: none)", lambda k=(d, c): int(self.caps.lanes[k].rate))
            registry.gauge(f"governor_rate_{d}_{c}_bytes_per_second", f"{c.upper()} {d}load over the last second",
                           lambda k=(d, c): round(self.rate(*k)))
            registry.gauge(f"governor_carried_{d}_{c}_bytes", f"bytes {d}loaded with {c.upper()} peers",
                           lambda k=(d, c): self.caps.lanes[k].carried)
        registry.gauge("governor_backoff_active", "1 while the WAN upload is backed off for the household",
                       lambda: int(self.state.backing_off))
        registry.gauge("governor_backoff_events", "back-offs begun since the agent started",
                       lambda: self.state.events)
        registry.gauge("governor_household_bytes_per_second", "the household's uplink rate last measured",
                       lambda: round(self.household))
        registry.gauge("governor_wear_written_today_bytes", "bytes the agent wrote to its disk today",
                       lambda: self.wear.written)
        registry.gauge("governor_wear_budget_bytes", "the SD-wear budget a day (0: none)", lambda: self.wear.budget)
        registry.gauge("governor_clock_synchronised", "1 once the wall clock is set (schedules apply by hour)",
                       lambda: int(self._synced()))


def from_config(config) -> Governor:
    """The agent's governor from its Config. Blocking (it reads the interfaces): call it from a worker thread."""
    return Governor(classifier=LinkClassifier(config.lan_subnets), wan_up=config.upload_limit,
                    lan_up=config.lan_upload_limit, wan_down=config.download_limit,
                    lan_down=config.lan_download_limit, schedule=Schedule(config.limit_schedule),
                    wan_floor=config.wan_floor, wear_budget=config.wear_budget)


__all__ = ["Governor", "from_config", "LAN", "WAN", "UP", "DOWN"]
