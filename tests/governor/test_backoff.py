"""The back-off's control law on series of samples (the controller is a function of the signal and the time),
the counter signals on real counter files, and the SD-wear budget on ManualClocks."""

import pytest

from edge.governor import backoff
from edge.governor.caps import UP
from edge.governor.governor import Governor
from edge.governor.links import WAN, LinkClassifier
from edge.governor.signals import QUIET, RouterSignal
from edge.governor.wear import WearBudget, WearBudgetSpent, process_writes
from tests.clock import ManualClock

FLOOR = 64 * 1024
CAP = 2_500_000


def run(series, cap=CAP, dt=0.25, sent=CAP):
    """Feed busy/quiet samples every dt seconds; the rates allowed after each."""
    state, now, out = backoff.State(), 0.0, []
    for busy in series:
        now += dt
        state = backoff.step(state, now=now, dt=dt, busy=busy, cap=cap, floor=FLOOR, sent=sent)
        out.append(backoff.allowed(state, cap))
    return state, out


def test_one_busy_sample_drops_to_the_floor_and_quiet_recovers_gradually():
    state, rates = run([False] * 4 + [True] * 8 + [False] * 200)
    assert rates[:4] == [CAP] * 4
    assert rates[4] == FLOOR                     # the first busy sample: at the floor at once
    hold = int(backoff.HOLD / 0.25)
    assert rates[11 + hold - 1] == FLOOR         # held for HOLD seconds after the last busy sample
    climbing = rates[11 + hold:]
    assert climbing[0] > FLOOR
    assert all(b >= a for a, b in zip(climbing, climbing[1:]))   # only up, never a jump to the cap
    assert climbing[3] < CAP / 4                 # a second after the hold: still far below the cap
    assert rates[-1] == CAP                      # back to the cap
    assert state.events == 1 and not state.backing_off
    print("recovery to the cap:", (rates.index(CAP, 12) - 12) * 0.25, "s after the flow stopped")


def test_busy_on_the_way_up_drops_again_and_counts_once_per_back_off():
    state, rates = run([True] + [False] * 20 + [True] + [False] * 400)
    assert FLOOR < rates[20] < CAP and rates[21] == FLOOR   # busy again on the way up: the same back-off
    assert state.events == 1
    state, _ = run([True] + [False] * 400 + [True] + [False] * 400)
    assert state.events == 2


def test_with_no_cap_recovery_ends_where_hearth_was_and_the_limit_is_lifted():
    state, rates = run([True] + [False] * 400, cap=0, sent=5_000_000)
    assert rates[0] == FLOOR
    assert rates[-1] == 0 and not state.backing_off
    assert max(r for r in rates if r) < 2 * 5_000_000


def test_no_signal_changes_nothing():
    g = Governor(classifier=LinkClassifier(interfaces={}, routed=False), wan_up=CAP, clock=ManualClock(),
                 synchronised=lambda: True)
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == CAP
    g.tick(True)
    assert g.caps.rates()[(UP, WAN)] == FLOOR
    assert g.figures()["backoff"]["active"] is True
    assert len(g.events) == 1


def test_the_router_signal_subtracts_hearths_own_bytes(tmp_path):
    counter = tmp_path / "wan" / "statistics" / "tx_bytes"
    counter.parent.mkdir(parents=True)
    own = [0, 0]
    signal = RouterSignal("wan", lambda: tuple(own), root=str(tmp_path))
    tx = 0

    def sample(now, wire, mine):
        nonlocal tx
        tx += wire
        own[0] += mine
        counter.write_text(f"{tx}\n")
        return signal.sample(now)

    assert sample(0.0, 0, 0) is None                          # one sample: no rate yet
    for k in range(1, 9):                                     # Hearth alone, its headers counted, for 2 s
        assert sample(k * 0.25, 250_000, 240_000) is False
    # someone else sends 140 KB every 0.25 s: seen within a second
    seen = [sample(2.25 + k * 0.25, 250_000, 100_000) for k in range(4)]
    assert True in seen, seen
    assert signal.household > QUIET
    missing = RouterSignal("nope", lambda: (0, 0), root=str(tmp_path))
    assert missing.sample(1.0) is None


def test_no_household_is_seen_before_the_confirming_span_has_been_watched(tmp_path):
    """A signal that has watched the counter for less than CONFIRM cannot tell a household from Hearth's own
    bytes that reach the wire late (a new agent's first blocks): it says not busy until it has, then sees the
    household at once."""
    counter = tmp_path / "wan" / "statistics" / "tx_bytes"
    counter.parent.mkdir(parents=True)
    signal = RouterSignal("wan", lambda: (0, 0), root=str(tmp_path))
    counter.write_text("0\n")
    assert signal.sample(0.0) is None
    seen = []
    for k in range(1, 12):                                    # 600 KB every 0.25 s, none of it Hearth's
        counter.write_text(f"{k * 600_000}\n")
        seen.append(signal.sample(k * 0.25))
    assert seen == [False] * 7 + [True] * 4, seen             # from 2 s of watching on


def test_hearths_own_late_bytes_are_no_household_and_an_upload_is_seen_within_a_second(tmp_path):
    """Hearth's bytes that reach the wire late (a backlog held while the fetching peer's disk stalled, with the
    retransmissions of its burst) are not taken for the household's (each would cost a whole back-off), while
    a household upload that starts beside Hearth is still seen within a second."""
    counter = tmp_path / "wan" / "statistics" / "tx_bytes"
    counter.parent.mkdir(parents=True)
    own = [0, 0]
    signal = RouterSignal("wan", lambda: tuple(own), root=str(tmp_path))
    tx, t = 0, 0.0

    def sample(wire, mine):
        nonlocal tx, t
        tx += wire
        own[0] += mine
        counter.write_text(f"{tx}\n")
        t += 0.25
        return signal.sample(t)

    counter.write_text("0\n")
    assert signal.sample(0.0) is None
    for _ in range(12):                                   # Hearth alone at 1.5 MB/s, 3% of headers on the wire
        assert sample(386_250, 375_000) is False
    assert sample(0, 524_288) is False                    # two blocks go to a peer whose disk stalls ...
    for _ in range(4):                                    # ... and nothing more for a second
        assert sample(0, 0) is False
    # then they leave at the uplink's rate, with 100 KB of retransmissions: 640 KB that Hearth counted over a
    # second ago (more than the short lead keeps)
    assert [sample(320_000, 0), sample(320_000, 0)] == [False, False]
    for _ in range(4):
        assert sample(386_250, 375_000) is False
    # a household upload of 1 MB/s starts beside Hearth
    seen = [sample(386_250 + 250_000, 375_000) for _ in range(4)]
    assert True in seen, seen
    assert signal.household > QUIET


def test_a_32_bit_counter_that_wraps_is_followed(tmp_path):
    from edge.governor.signals import CounterSignal

    class Wrapping(CounterSignal):
        wrap = 1 << 32
        values = iter([(1 << 32) - 100_000, 50_000, 200_000])

        def counter(self):
            return next(self.values)

    s = Wrapping(lambda: (0, 0))
    s.sample(0.0)
    s.sample(0.25)
    assert s.household == pytest.approx(150_000 / 0.25)
    s.sample(0.5)
    assert s.household == pytest.approx(300_000 / 0.5)


def test_the_wear_budget_stops_caching_until_the_next_day_by_uptime_and_by_date():
    mono = ManualClock(0.0)
    wear = WearBudget(1_000_000, monotonic=mono, synchronised=lambda: False)
    wear.observe(5_000)            # the first reading is where counting starts
    wear.observe(905_000)
    assert wear.may_cache() and wear.may_accept_pieces()
    wear.count(100_000)
    assert not wear.may_cache() and not wear.may_accept_pieces()
    with pytest.raises(WearBudgetSpent, match="tomorrow"):
        wear.check()
    mono.advance(86_400)            # a day of uptime: a new day while the clock is unset
    assert wear.may_cache() and wear.written == 0
    wall = ManualClock(1_796_000_000.0)
    dated = WearBudget(10, wall=wall, synchronised=lambda: True)
    dated.count(10)
    assert dated.spent()
    wall.advance(86_400)
    assert not dated.spent()
    assert WearBudget(0).may_cache()   # no budget: never spent


def test_the_process_writes_are_read_from_the_kernel(tmp_path):
    before = process_writes()
    if before is None:
        pytest.skip("this kernel does not count a process's writes (/proc/self/io)")
    import os
    with open(tmp_path / "f", "wb") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    assert process_writes() - before >= 1 << 20


def test_the_governors_figures_are_on_metrics():
    from edge.metrics import render
    from edge.service import Registry
    registry = Registry()
    g = Governor(classifier=LinkClassifier(interfaces={}, routed=False), wan_up=CAP, clock=ManualClock(),
                 synchronised=lambda: True)
    g.register(registry)
    g.tick(True)
    text = render(registry.samples()).decode()
    assert f"hearth_governor_cap_up_wan_bytes_per_second {FLOOR}" in text
    assert "hearth_governor_backoff_active 1" in text and "hearth_governor_backoff_events 1" in text
    assert "hearth_governor_wear_written_today_bytes 0" in text
    assert "hearth_governor_rate_down_lan_bytes_per_second 0" in text


CHILD = """
import os, subprocess, sys
def write(path, n):
    with open(path, "wb") as f:
        f.write(os.urandom(n))
        f.flush()
        os.fsync(f.fileno())
size = int(sys.argv[2])
if sys.argv[1] == "child":   # a media child process: writes, then runs a grandchild (its FFmpeg) that writes
    write(sys.argv[3] + ".child", size)
    grandchild = subprocess.Popen([sys.executable, __file__, "grandchild", str(size), sys.argv[3]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    print(grandchild.stdout.readline().strip(), flush=True)
    sys.stdin.read()
    grandchild.stdin.close()
    grandchild.wait()
else:
    write(sys.argv[3] + ".grandchild", size)
    print("written", flush=True)
    sys.stdin.read()
"""


def test_the_writes_of_child_processes_count_while_they_run_and_once_reaped(tmp_path):
    import subprocess
    import sys

    from edge.governor.wear import WriteCounter
    counter = WriteCounter()
    if counter.sample() is None:
        pytest.skip("this kernel does not count a process's writes (/proc/self/io)")
    size = 4 << 20
    wear = WearBudget(3 * size)
    wear.observe(counter.sample())
    script = tmp_path / "media_child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), "child", str(size), str(tmp_path / "f")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"   # both are written and both still run
        wear.observe(counter.sample())
        running = wear.written
    finally:
        child.stdin.close()
        child.wait()                                   # reaped: the kernel adds its count (its grandchild's) to ours
    wear.observe(counter.sample(walk=False))           # (a tick between walks: the known children read alone)
    reaped = wear.written
    wear.observe(counter.sample())
    print(f"\nchild and grandchild wrote {2 * size} bytes: counted {running} while they ran, {reaped} once reaped")
    assert running >= 2 * size                         # the running child's and grandchild's writes
    assert 2 * size <= reaped < 3 * size               # once, not again when the kernel moved them to us
    assert wear.written == reaped and not wear.spent()
