"""The back-off: when the household uses the uplink, Hearth's WAN sending drops to a floor, then comes back
gradually once the household is quiet. A pure function of the signal and the time, so it is tested by feeding
it series; edge/governor/service.py samples the signal and applies the rate.

The control law (docs/governor.md says the same):

- **Decrease: at once, to the floor.** A sample that says the household is busy sets the rate to `floor`
  (wan_floor, 64 KB/s by default): a multiplicative decrease taken all the way in one step, because a video call
  that stutters for the seconds a gentler decrease would take is what the household notices. With samples every
  0.25 s over a 0.5 s window, the rate is at the floor within about 0.75 s of the household's first bytes.
- **Hold.** The rate stays at the floor while the household is busy, and for `hold` seconds (3) after the last
  busy sample: a household flow that pauses for a moment (a page between two loads) does not get a burst.
- **Increase: gradually.** Then every second of quiet multiplies the rate by `GROWTH` (1.25) and adds the floor:
  from 64 KB/s to 2.5 MB/s (20 Mbit/s) in about 13 s. A busy sample on the way up drops it to the floor again.
- **Ceiling.** The increase ends at the WAN cap in force (the cap times the schedule's share); with no cap, at
  twice the most Hearth sent before the back-off (at least 1 MB/s), where the limit is lifted altogether.
"""

import dataclasses

GROWTH = 1.25          # each quiet second, the rate times this, plus the floor
HOLD = 3.0             # seconds at the floor after the last busy sample
MIN_CEILING = 1 << 20  # with no cap: the recovery ends at least here (then no limit)


@dataclasses.dataclass(frozen=True)
class State:
    rate: float = 0.0          # the WAN send rate allowed now (bytes/s); 0: no limit from the back-off
    busy_at: float | None = None   # the last busy sample
    events: int = 0            # back-offs begun (a busy sample while not backing off)
    before: float = 0.0        # what Hearth sent (bytes/s) when the back-off began: the ceiling with no cap

    @property
    def backing_off(self) -> bool:
        return self.rate > 0


def step(state: State, *, now: float, dt: float, busy: bool, cap: float, floor: float, sent: float = 0.0,
         hold: float = HOLD) -> State:
    """The next state, dt seconds after the last one, given whether the household is busy now. cap: the WAN
    upload cap in force (0: none); floor: wan_floor; sent: what Hearth sends over the WAN now (bytes/s)."""
    if busy:
        if state.backing_off:
            return dataclasses.replace(state, rate=float(floor), busy_at=now)
        return State(rate=float(floor), busy_at=now, events=state.events + 1, before=sent)
    if not state.backing_off:
        return state
    if state.busy_at is not None and now - state.busy_at < hold:
        return state
    rate = state.rate * GROWTH ** dt + floor * dt
    ceiling = cap if cap else max(2 * state.before, MIN_CEILING)
    if rate >= ceiling:
        return State(events=state.events)   # recovered: the cap alone limits again
    return dataclasses.replace(state, rate=rate)


def allowed(state: State, cap: float) -> float:
    """The WAN upload rate to apply: the cap, lowered by the back-off (0: no limit)."""
    if not state.backing_off:
        return cap
    return min(cap, state.rate) if cap else state.rate
