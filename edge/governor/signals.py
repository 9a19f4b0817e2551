"""How the node sees the household using the uplink, by case. Each signal's sample(now) is blocking (it reads
counters or sends a probe) and is called from a worker thread; it returns whether the household is busy now,
or None while it cannot tell yet.

- RouterSignal: the node is the household's router. Its WAN interface's byte counters
  (/sys/class/net/IF/statistics/tx_bytes) count everything that left the home; less what Hearth itself sent
  there, the rest is the household's.
- UpnpSignal: the node is behind a home router that offers UPnP-IGD: the router's GetTotalBytesSent, less
  Hearth's own, the same way (miniupnpc, where installed).
- DelaySignal: neither: the delay to a probe target across the uplink, in the manner of LEDBAT (RFC 6817): the
  lowest delay seen over the last minutes is the base (empty queues); a delay above the base by more than the
  target means a queue is building on the uplink. It cannot tell the household's queue from Hearth's own, so it
  makes Hearth a scavenger: it yields whenever the uplink queues, and grows back while it does not.
"""

import collections
import logging
import socket
import time

log = logging.getLogger(__name__)
WINDOW = 0.5            # seconds of counters a rate is measured over
CONFIRM = 2.0           # seconds over which a busy household must show too (see CounterSignal)
OVERHEAD = 1.06         # where Hearth's bytes are estimated: wire bytes per payload byte counted (TCP/IP
                        # headers, CURVE framing, ZMTP)
ACKS = 0.03             # ... and uplink bytes (TCP acknowledgements) per byte Hearth receives
QUIET = 32 * 1024       # household bytes/s under this are background chatter, not use of the uplink
SLACK = 0.05            # ... plus this share of Hearth's own rate (its estimate of its own wire bytes is rough)
TARGET = 0.025          # queuing delay (s) past which the uplink is busy: libutp's LEDBAT target (RFC 6817: <= 100 ms)


def household_busy(household: float, own: float) -> bool:
    """Whether a household rate (bytes/s) is use of the uplink rather than chatter or an error in Hearth's
    estimate of its own traffic."""
    return household > QUIET + SLACK * own


class CounterSignal:
    """The household's rate from a counter of every byte sent to the WAN (the router's or the node's own WAN
    interface), less Hearth's own.

    Hearth's own bytes are measured where the kernel can tell: wire() gives the bytes its TCP sockets to WAN
    peers have put on the wire so far, retransmissions, headers and acknowledgements included
    (edge/governor/tcpdiag.py), or None (no sock_diag, a kernel before 4.19). Else they are estimated from
    own(): (bytes Hearth sent to WAN peers, bytes it received from them), the governor's lanes' cumulative
    payload counts, each byte counted when it may go, times OVERHEAD and ACKS. The estimate is rough where the
    measure is not: a backlog held while the receiving peer stalled (its disk busy) reaches the wire late, and
    the retransmissions of a burst the uplink's queue dropped reach it twice; each looked like a household's
    upload and cost Hearth a whole back-off (the hold and the climb back: some 10 s below its cap). And the
    estimate runs some 2.5% over the wire (OVERHEAD is generous), which kept the lead near its bound and
    hid a household's first half second. The sockets are measured while Hearth has used the WAN in the last
    IDLE seconds (each sample a netlink dump); the first sample after that is estimated.

    Either way Hearth's bytes reach the counter somewhat after they are counted (the lanes count ahead of the
    socket; TCP counts a segment before it waits in the interface's queue), so a sample where the wire carried
    less than Hearth's leaves a lead: bytes of Hearth's still to come. A later sample's excess pays that lead
    off before any of it is the household's. The lead is bounded by Hearth's bytes over the last LEAD_SPAN
    seconds (queues hold no more), so a household that starts while Hearth slows down is seen within that long.

    And the household is busy only when it is busy over WINDOW and also over the last CONFIRM seconds with no
    lead: the wire carried more than Hearth's in all that time, by more than chatter. A real upload shows there
    within a fraction of a second of its start (QUIET and SLACK over 2 s come to some 0.2 MB beside 1.5 MB/s of
    Hearth's); Hearth's own late bytes, late by less than CONFIRM, are paid for by what it sent in it. A signal
    that has watched for less than CONFIRM (a new agent's first seconds) says not busy."""

    wrap = 1 << 64
    LEAD_SPAN = 0.5
    IDLE = 10.0   # seconds after Hearth's last WAN byte that its sockets are still measured

    def __init__(self, own, wire=None):
        self.own = own
        self.wire = wire
        self.measured = False  # whether the last sample measured Hearth's bytes (else it estimated them)
        self.window: collections.deque = collections.deque()   # (dt, household bytes, Hearth's bytes)
        self.confirm: collections.deque = collections.deque()  # (dt, wire bytes, Hearth's wire bytes, its bytes)
        self.mine: collections.deque = collections.deque()     # (when, Hearth's wire bytes) for the lead bound
        self.lead = 0.0
        self.household = 0.0   # the last measured household rate (bytes/s)
        self.sent = 0.0        # ... and Hearth's own
        self.confirmed = 0.0   # the household's rate over CONFIRM (bytes/s), the other half of the test
        self._prev = None      # (when, counter, own sent, own received, own wire) at the last sample
        self._active = float("-inf")   # when Hearth's WAN counts last moved
        self._last: int | None = None
        self._offset = 0

    def counter(self) -> int | None:
        raise NotImplementedError

    def sample(self, now: float) -> bool | None:
        raw = self.counter()
        if raw is None:
            return None
        if self._last is not None and raw < self._last:
            if self._last >= self.wrap // 2:   # a counter that wrapped (a router's 32-bit one)
                self._offset += self.wrap
            else:                              # one that was reset (the router rebooted): start again
                self._prev = None
        self._last = raw
        total = raw + self._offset
        sent, received = self.own()
        if self._prev is None or (sent, received) != self._prev[2:4]:
            self._active = now
        # Hearth's sockets, read after the counter (it lags them), while Hearth has used the WAN lately: with no
        # WAN transfer there is nothing of its own to measure (and a dump costs ~2 ms)
        measure = self.wire is not None and now - self._active <= self.IDLE
        wire = self.wire() if measure else None
        prev, self._prev = self._prev, (now, total, sent, received, wire)
        if prev is None or now <= prev[0]:
            return None
        dt = now - prev[0]
        self.measured = wire is not None and prev[4] is not None
        if self.measured:
            mine = wire - prev[4]
        else:
            mine = (sent - prev[2]) * OVERHEAD + (received - prev[3]) * ACKS
        excess = (total - prev[1]) - mine
        if excess < 0:
            self.lead -= excess   # Hearth's bytes still on their way to the wire
            excess = 0.0
        else:
            paid = min(self.lead, excess)
            self.lead -= paid
            excess -= paid
        self.mine.append((now, mine))
        while self.mine and now - self.mine[0][0] > self.LEAD_SPAN:
            self.mine.popleft()
        self.lead = min(self.lead, sum(m for _, m in self.mine))
        self.window.append((dt, excess, sent - prev[2]))
        while len(self.window) > 1 and sum(d for d, _, _ in self.window) - self.window[0][0] >= WINDOW:
            self.window.popleft()
        span = sum(d for d, _, _ in self.window)
        self.household = sum(h for _, h, _ in self.window) / span
        self.sent = sum(s for _, _, s in self.window) / span
        self.confirm.append((dt, total - prev[1], mine, sent - prev[2]))
        while len(self.confirm) > 1 and sum(c[0] for c in self.confirm) - self.confirm[0][0] >= CONFIRM:
            self.confirm.popleft()
        span = sum(c[0] for c in self.confirm)
        self.confirmed = max(0.0, sum(c[1] for c in self.confirm) - sum(c[2] for c in self.confirm)) / span
        return span >= CONFIRM * 0.99 and household_busy(self.household, self.sent) and household_busy(
            self.confirmed, sum(c[3] for c in self.confirm) / span)

    def describe(self) -> str:
        """The last sample's figures, for the log line a back-off starts with."""
        return (f"the uplink carried {self.household:.0f} B/s over {WINDOW} s and {self.confirmed:.0f} B/s over "
                f"{CONFIRM} s more than Hearth's own, {'measured' if self.measured else 'estimated'} (Hearth counted "
                f"{self.sent:.0f} B/s; its bytes still to come {self.lead:.0f} B)")


class RouterSignal(CounterSignal):
    """The node is the router: its WAN interface's transmit counter."""

    def __init__(self, interface: str, own, root: str = "/sys/class/net", wire=None):
        super().__init__(own, wire)
        self.interface = interface
        self.path = f"{root}/{interface}/statistics/tx_bytes"

    def counter(self) -> int | None:
        try:
            with open(self.path) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None


class UpnpSignal(CounterSignal):
    """A home router's UPnP-IGD counter (GetTotalBytesSent: 32 bits on most routers, so it wraps)."""

    wrap = 1 << 32

    def __init__(self, igd, own, wire=None):
        """igd: a miniupnpc.UPnP whose IGD is selected (discover_igd())."""
        super().__init__(own, wire)
        self.igd = igd

    def counter(self) -> int | None:
        try:
            return int(self.igd.totalbytesent())
        except Exception:   # noqa: BLE001 - the router's answer, whatever went wrong, is no sample
            return None


def discover_igd(timeout_ms: int = 1000):
    """A miniupnpc.UPnP with the LAN's Internet gateway selected, or None (miniupnpc not installed, no IGD)."""
    try:
        import miniupnpc
    except ImportError:
        return None
    try:
        igd = miniupnpc.UPnP()
        igd.discoverdelay = timeout_ms
        if igd.discover() and igd.selectigd():
            int(igd.totalbytesent())   # offered: the counters answer
            return igd
    except Exception:   # noqa: BLE001 - no gateway, or one that does not offer the counters
        pass
    return None


class DelayTracker:
    """LEDBAT's delay estimate on a series of delay samples (seconds): the base is the lowest delay of the last
    BASE_MINUTES one-minute buckets, the current delay the lowest of the last CURRENT samples (one late probe is
    noise); busy while current - base > target."""

    BASE_MINUTES = 10
    CURRENT = 3

    def __init__(self, target: float = TARGET):
        self.target = target
        self.base: collections.deque = collections.deque()   # (minute, lowest delay in it)
        self.recent: collections.deque = collections.deque(maxlen=self.CURRENT)
        self.queuing = 0.0   # the last estimate of the uplink's queuing delay (s)

    def feed(self, now: float, delay: float | None) -> bool | None:
        """One probe's delay (None: it got no answer, which says nothing either way)."""
        if delay is None:
            return None if not self.recent else self.queuing > self.target
        minute = int(now // 60)
        if self.base and self.base[-1][0] == minute:
            self.base[-1] = (minute, min(self.base[-1][1], delay))
        else:
            self.base.append((minute, delay))
            while self.base and self.base[0][0] <= minute - self.BASE_MINUTES:
                self.base.popleft()
        self.recent.append(delay)
        self.queuing = min(self.recent) - min(d for _, d in self.base)
        return self.queuing > self.target


class DelaySignal:
    """The delay of a TCP handshake to a target across the uplink (a WAN neighbour's transport port): the SYN
    waits in the uplink's queue behind whatever the household sends."""

    def __init__(self, target: tuple[str, int], tracker: DelayTracker | None = None, timeout: float = 2.0):
        self.target = target
        self.tracker = tracker or DelayTracker()
        self.timeout = timeout

    def probe(self) -> float | None:
        began = time.monotonic()
        try:
            with socket.create_connection(self.target, timeout=self.timeout):
                return time.monotonic() - began
        except OSError:
            return None

    def sample(self, now: float) -> bool | None:
        return self.tracker.feed(now, self.probe())
