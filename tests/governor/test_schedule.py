"""Schedules by hour and weekday switch on time (a ManualClock for the wall clock), and the most conservative
entry applies until the clock is synchronised."""

import calendar
import time

import pytest

from edge.governor.caps import DOWN, UP
from edge.governor.governor import Governor
from edge.governor.links import LAN, WAN, LinkClassifier
from edge.governor.schedule import Schedule, ScheduleError
from tests.clock import ManualClock

TABLE = ["01:00-07:00 100%", "mon-fri 18:00-23:00 20%", "sat,sun 22:00-02:00 500K"]


def local(text: str) -> float:
    """The epoch seconds of a local time 'YYYY-mm-dd HH:MM'."""
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M"))


def governor(wall, synchronised=True, table=TABLE):
    return Governor(classifier=LinkClassifier(interfaces={}, routed=False), wan_up=2_000_000, lan_up=0,
                    wan_down=4_000_000, schedule=Schedule(table), clock=ManualClock(), wall=wall,
                    synchronised=lambda: synchronised)


def test_the_caps_follow_the_schedule_and_switch_on_time():
    wall = ManualClock(local("2026-12-07 17:59"))   # a Monday
    g = governor(wall)
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 2_000_000   # no entry: the caps in full
    wall.advance(60)                                 # 18:00: weekday evening, a fifth
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 400_000
    assert g.caps.rates()[(DOWN, WAN)] == 800_000
    assert g.caps.rates()[(UP, LAN)] == 0            # LAN caps are not scheduled
    wall.advance(5 * 3600 - 1)                       # 22:59:59
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 400_000
    wall.advance(1)                                  # 23:00
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 2_000_000


def test_an_entry_past_midnight_belongs_to_the_day_it_began():
    wall = ManualClock(local("2026-12-12 23:30"))    # a Saturday
    g = governor(wall)
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 500_000
    wall.advance(3600)                               # Sunday 00:30: still Saturday night's entry
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 500_000
    wall.advance(24 * 3600)                          # Monday 00:30: Sunday night's
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 500_000
    wall.advance(5400)                               # Monday 02:00: the night's 100% (the first match wins)
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 2_000_000
    wall.advance(24 * 3600 - 5400)                   # Tuesday 00:30: Monday night is not in the entry
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 2_000_000


def test_until_the_clock_is_synchronised_the_most_conservative_applies():
    g = governor(ManualClock(local("2026-12-07 03:00")), synchronised=False)   # the night's 100% if it knew
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 400_000      # 20% (smaller than the 500K entry's rate)
    assert g.figures()["clock_synchronised"] is False


def test_a_rate_entry_limits_even_with_no_cap():
    g = Governor(classifier=LinkClassifier(interfaces={}, routed=False), schedule=Schedule(["00:00-24:00 1M"]),
                 clock=ManualClock(), wall=ManualClock(local("2026-12-07 12:00")), synchronised=lambda: True)
    g.tick(None)
    assert g.caps.rates()[(UP, WAN)] == 1_000_000


@pytest.mark.parametrize("entry", ["18:00-25:00 20%", "tuesday 18:00-23:00 20%", "18:00-18:00 20%",
                                   "18:00-23:00 120%", "18:00-23:00 fast", "evenings 20%"])
def test_a_bad_entry_is_named(entry):
    with pytest.raises(ScheduleError, match="limit_schedule"):
        Schedule([entry])


def test_local_time_helper_is_local():
    assert time.localtime(local("2026-12-07 18:00")).tm_hour == 18
    assert calendar.day_name[time.localtime(local("2026-12-07 18:00")).tm_wday] == "Monday"
