"""The bandwidth history: a bounded ring of per-minute buckets by series, fed by a Meter from cumulative
counters; a clock the test moves."""

from edge.status.history import MINUTES, SERIES, History, Meter


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_bytes_go_in_the_minute_they_were_counted_and_quiet_minutes_are_empty():
    clock = Clock()
    h = History(clock=clock, wall=lambda: 1_700_000_000.0 + clock.t)
    h.add({"served_lan": 100, "fetched_wan": 7})
    clock.t += 30
    h.add({"served_lan": 50})
    clock.t += 60 * 3          # three minutes later: the two between are there, empty
    h.add({"fetched_lan": 9})
    rows = h.series()["rows"]
    assert [r[1:] for r in rows] == [[150, 0, 0, 7], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 9, 0]]
    assert [r[0] - rows[0][0] for r in rows] == [0, 60, 120, 180]      # wall-clock minute starts
    assert h.series()["series"] == list(SERIES) and h.series()["step"] == 60 and h.series()["whole"]
    recent = h.series(since=rows[-2][0])        # what a page that has the rows up to that minute asks for
    assert [r[1:] for r in recent["rows"]] == [[0, 0, 0, 0], [0, 0, 9, 0]] and not recent["whole"]


def test_the_ring_keeps_one_day_and_no_more():
    clock = Clock()
    h = History(clock=clock)
    for minute in range(MINUTES + 500):
        h.add({"served_wan": minute})
        clock.t += 60
    assert len(h) == MINUTES
    rows = h.series()["rows"]
    assert rows[0][2] == 500 and rows[-1][2] == MINUTES + 499   # the oldest went first
    clock.t += 60 * 10 * MINUTES                                # a long silence: still one day of buckets
    h.add({"served_wan": 1})
    assert len(h) == MINUTES and h.series()["rows"][-1][2] == 1 and sum(r[2] for r in h.series()["rows"]) == 1


def test_the_meter_counts_differences_and_rates_and_never_goes_negative():
    clock = Clock()
    totals = {"served_lan": 0, "served_wan": 0, "fetched_lan": 1000, "fetched_wan": 0}
    meter = Meter(lambda: dict(totals), clock=clock)   # what was counted before it started is not history
    clock.t += 2
    totals["fetched_lan"] += 4000
    totals["served_wan"] += 600
    meter.sample()
    assert meter.rates == {"served_lan": 0, "served_wan": 300, "fetched_lan": 2000, "fetched_wan": 0}
    clock.t += 2
    totals["fetched_lan"] = 0         # a counter replaced (never in an agent): nothing, not a negative
    meter.sample()
    assert meter.rates["fetched_lan"] == 0
    row = meter.history.series()["rows"][-1]
    assert row[1:] == [0, 600, 4000, 0]
