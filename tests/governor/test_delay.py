"""The delay signal (LEDBAT-style) on a recorded series: TCP handshake delays across a shaped uplink while a
household upload starts and stops (tests/governor/data/rtt_household_upload.txt says how it was recorded)."""

import os

from edge.governor import backoff
from edge.governor.signals import DelayTracker

SERIES = os.path.join(os.path.dirname(__file__), "data", "rtt_household_upload.txt")
FLOW_BEGAN, QUEUE_DRAINED = 6.0, 14.6


def recorded():
    with open(SERIES) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            t, delay = line.split()
            yield float(t), None if delay == "-" else float(delay) / 1000


def test_the_delay_signal_sees_the_household_upload_and_nothing_else():
    tracker = DelayTracker()
    verdicts = [(t, tracker.feed(1000.0 + t, delay)) for t, delay in recorded()]
    before = [busy for t, busy in verdicts if t < FLOW_BEGAN]
    during = [busy for t, busy in verdicts if FLOW_BEGAN <= t < QUEUE_DRAINED]
    after = [busy for t, busy in verdicts if t >= QUEUE_DRAINED + 0.3]   # the filter's three samples
    first = next(t for t, busy in verdicts if busy)
    print(f"\ndelay signal on the recorded series: busy {first - FLOW_BEGAN:.2f} s after the household's upload "
          f"began; {sum(during)}/{len(during)} samples busy during it; {sum(before) + sum(after)} false before or "
          f"after ({len(before) + len(after)} samples); base delay {min(d for _, d in tracker.base) * 1000:.2f} ms")
    assert not any(before) and not any(after)
    assert FLOW_BEGAN <= first <= FLOW_BEGAN + 0.5
    assert sum(during) >= 10


def test_the_controller_on_the_recorded_series_backs_off_and_then_recovers():
    tracker, state, last = DelayTracker(), backoff.State(), 0.0
    rates = []
    for t, delay in recorded():
        busy = tracker.feed(1000.0 + t, delay)
        state = backoff.step(state, now=t, dt=t - last, busy=bool(busy), cap=2_500_000, floor=65536)
        last = t
        rates.append((t, backoff.allowed(state, 2_500_000)))
    assert all(r == 2_500_000 for t, r in rates if t < FLOW_BEGAN)
    assert any(r == 65536 for t, r in rates if FLOW_BEGAN <= t <= FLOW_BEGAN + 0.5)
    assert state.events >= 1
    end = rates[-1][1]
    print(f"after the series ({rates[-1][0]:.1f} s): {end} B/s allowed, back-offs {state.events}")
    assert 65536 < end   # recovering once the queue drained
