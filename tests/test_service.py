"""edge/service.py: the counter registry that feeds `hearth status` and /metrics, and the service tree that stops
services in reverse start order within one deadline (on Trio's autojump clock: no real time passes)."""

import pytest
import trio

from edge.metrics import render
from edge.service import Counters, Handle, Registry, ServiceTree


def test_counters_feed_the_registry_under_their_metric_names():
    registry = Registry()
    served = Counters(registry, {"busy": ("busy_total", "told to retry"), "blocks": ("blocks_total", "sent")})
    served.inc("busy")
    served["blocks"] += 3
    peers = registry.gauge("peers", "neighbours known", lambda: 7)
    assert served.values() == {"busy": 1, "blocks": 3} and served.get("absent", 0) == 0
    assert registry.samples() == {"busy_total": ("counter", "told to retry", 1),
                                  "blocks_total": ("counter", "sent", 3), "peers": ("gauge", "neighbours known", 7)}
    assert b"# TYPE hearth_busy_total counter\nhearth_busy_total 1\n" in render(registry.samples())
    assert peers.read() == 7
    with pytest.raises(ValueError, match="twice"):
        registry.counter("peers", "again")


class Slow(Handle):
    """A service whose drain takes `takes` seconds."""

    def __init__(self, name, takes, log):
        super().__init__(name)
        self.takes, self.log = takes, log

    async def drain(self):
        self.log.append(f"drain {self.name}")
        await trio.sleep(self.takes)


def serve(name, takes, log):
    async def serve_it(*, task_status=trio.TASK_STATUS_IGNORED):
        log.append(f"start {name}")
        task_status.started(Slow(name, takes, log))
        try:
            await trio.sleep_forever()
        finally:
            log.append(f"end {name}")
    return serve_it


@pytest.mark.trio
async def test_services_stop_in_reverse_order_and_a_late_drain_is_cut_at_the_deadline(autojump_clock):
    log, tree = [], ServiceTree()
    async with trio.open_nursery() as nursery:
        for name, takes in (("first", 1.0), ("second", 100.0), ("third", 2.0)):
            await tree.start(nursery, name, serve(name, takes, log))
        assert "second" in tree and tree.get("third").name == "third" and list(tree.stats()) == ["first", "second",
                                                                                                  "third"]
        began = trio.current_time()
        stopped = await tree.stop(began + 10)
    assert trio.current_time() - began == pytest.approx(10)
    assert [(name, round(took), whole) for name, took, whole in stopped] == \
        [("third", 2, True), ("second", 8, False), ("first", 0, False)]
    assert log[:6] == ["start first", "start second", "start third", "drain third", "end third", "drain second"]
    assert sorted(log[6:]) == ["end first", "end second"]   # the first was past the deadline: ended without a drain
