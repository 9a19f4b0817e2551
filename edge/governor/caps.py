"""The governor's caps: four byte rates, upload and download to LAN and WAN peers, each a bucket every transfer
pays from by its peer's link class (edge/governor/links.py), and what each has carried.

    upload_limit        WAN upload (a seed's [limits] upload)       lan_upload_limit    LAN upload
    download_limit      WAN download                                lan_download_limit  LAN download

(0: no cap.) The WAN caps are scaled by the schedule in force (edge/governor/schedule.py) and the WAN upload is
lowered further by the back-off (edge/governor/backoff.py); the service (edge/governor/service.py) works out
the rates each tick and sets them here with set_rates(). Paying and counting run wherever the transfer runs
(the transport's serving thread, the gateway and fetches on the Trio thread): a lock guards each bucket.
"""

import collections
import time

from edge.governor.links import CLASSES, LAN, WAN, LinkClassifier
from edge.ratelimit import ByteRate

UP, DOWN = "up", "down"
AHEAD = 0.25  # seconds of a lane's debt the transport schedules ahead; further blocks wait unpaid
DIRECTIONS = (UP, DOWN)


class Lane(ByteRate):
    """One direction and link class: a ByteRate that also counts the bytes that paid through it, each when it
    may go (a block the transport holds for its time counts then, as the wire sees it: the router signal
    compares the two), and that schedules at most AHEAD seconds of debt (debit_within: past it the transport
    holds blocks unpaid until the debt is back under it), so a lower rate acts within that long."""

    ahead = AHEAD

    def __init__(self, rate: float, clock=time.monotonic):
        super().__init__(rate, clock=clock)
        self._sent = 0
        self._due: collections.deque = collections.deque()   # (when, bytes) debited to go later
        # the count shares the bucket's lock: a block pays and is counted under one acquisition, with one
        # clock reading (every block of every transfer pays through a lane, limited or not)

    @property
    def carried(self) -> int:
        """Bytes that paid through this lane and whose time to go has come."""
        with self._lock:
            now = self._clock()
            due = self._due
            while due and due[0][0] <= now:
                self._sent += due.popleft()[1]
            return self._sent

    def debit(self, n: int) -> float:
        with self._lock:
            return self._pay(n, self._clock())

    def debit_within(self, n: int) -> float | None:
        with self._lock:
            now = self._clock()
            if self.rate and self._tokens_at(now) < -self.ahead * self.rate:
                return None
            return self._pay(n, now)

    def count_unlimited(self, n: int) -> bool:
        """If this lane has no cap, count n bytes that go now (what debit_within of each of their blocks would do,
        under one lock) and say True; else count nothing and say False (each block pays through debit_within)."""
        with self._lock:
            if self.rate:
                return False
            self._sent += n
            return True

    def _pay(self, n: int, now: float) -> float:
        """Debit n bytes and count them, now or when their wait is over (the lock held)."""
        wait = self._debit(n, now) if self.rate else 0.0
        if wait > 0:
            self._due.append((now + wait, n))
        else:
            self._sent += n
        return wait

    def take_now(self, n: int) -> bool:
        if super().take_now(n):
            with self._lock:
                self._sent += n
            return True
        return False


class Caps:
    def __init__(self, classifier: LinkClassifier, *, wan_up: int = 0, lan_up: int = 0, wan_down: int = 0,
                 lan_down: int = 0, clock=time.monotonic):
        self.classifier = classifier
        self.configured = {(UP, WAN): wan_up, (UP, LAN): lan_up, (DOWN, WAN): wan_down, (DOWN, LAN): lan_down}
        self.lanes = {key: Lane(rate, clock) for key, rate in self.configured.items()}

    def lane(self, direction: str, ip: str | None) -> Lane:
        """The lane a transfer to or from ip pays from (an unknown address is WAN: the cautious side)."""
        return self.lanes[(direction, self.classifier.classify(ip) if ip else WAN)]

    def upload_for(self, ip: str | None) -> Lane:
        return self.lane(UP, ip)

    def download_for(self, ip: str | None) -> Lane:
        return self.lane(DOWN, ip)

    def set_rates(self, rates: dict) -> None:
        """{(direction, class): bytes/s (0: none)}: the rates in force from now, set only where they changed."""
        for key, rate in rates.items():
            lane = self.lanes[key]
            if lane.rate != float(rate):
                lane.set_rate(rate)

    def carried(self) -> dict:
        """{(direction, class): bytes carried so far}."""
        return {key: lane.carried for key, lane in self.lanes.items()}

    def rates(self) -> dict:
        """{(direction, class): the rate in force (bytes/s, 0: none)}."""
        return {key: int(lane.rate) for key, lane in self.lanes.items()}


KEYS = [(d, c) for d in DIRECTIONS for c in CLASSES]
