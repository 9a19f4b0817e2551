"""The governor as a service: the signal the setting picks, and ticks that sample in a worker thread."""

import functools
import socket

import pytest
import trio

from edge.governor.caps import UP
from edge.governor.governor import Governor
from edge.governor.links import WAN, LinkClassifier
from edge.governor.service import pick_signal, serve_governor
from edge.governor.signals import DelaySignal


def governor():
    return Governor(classifier=LinkClassifier(interfaces={}, routed=False), wan_up=1_000_000,
                    synchronised=lambda: True)


def test_the_setting_picks_the_signal():
    g = governor()
    assert pick_signal("off", g) is None
    delay = pick_signal("delay", g, probe="127.0.0.1:9")
    assert isinstance(delay, DelaySignal) and delay.target == ("127.0.0.1", 9)
    assert isinstance(pick_signal("delay", g, wan_target=("203.0.113.7", 4801)), DelaySignal)
    assert pick_signal("delay", g) is None   # no probe and no WAN neighbour: no signal


@pytest.mark.trio
async def test_the_service_samples_a_delay_probe_and_ticks():
    listener = socket.create_server(("127.0.0.1", 0))   # the probe's target: a handshake is all it needs
    port = listener.getsockname()[1]
    g = governor()
    try:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(functools.partial(serve_governor, g, backoff="delay",
                                                           probe=f"127.0.0.1:{port}"))
            # started at once (the transport need not wait); the signal is chosen in a worker thread after
            with trio.fail_after(30):
                while handle.stats()["backoff"]["signal"] == "choosing":
                    await trio.sleep(0.05)
            assert handle.stats()["backoff"]["signal"] == "delay"
            await trio.sleep(1.2)   # a few ticks, each a probe in a worker thread
            assert g.figures()["backoff"]["signal"] == "delay"
            assert g.caps.rates()[(UP, WAN)] == 1_000_000   # loopback has no queue: no back-off
            nursery.cancel_scope.cancel()
    finally:
        listener.close()


def test_a_run_that_ends_with_a_sample_out_leaves_the_next_runs_governor_free(monkeypatch):
    """An agent's run cancelled while the governor's sample is still in its worker thread (abandoned): a later
    run in the same process (agents in tests) starts its governor at once. With one limiter for the module, the
    abandoned sample's token went back through the finished run, never, and the next governor waited for good."""
    import threading
    from edge.governor import service
    out, release = threading.Event(), threading.Event()
    real = service._sample

    def slow_sample(*args):
        out.set()
        release.wait(10)
        return real(*args)

    async def run_until_a_sample_is_out():
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve_governor, governor(), backoff="off"))
            await trio.to_thread.run_sync(out.wait, 10)
            nursery.cancel_scope.cancel()   # the sample is abandoned, still holding its thread's token

    monkeypatch.setattr(service, "_sample", slow_sample)
    trio.run(run_until_a_sample_is_out)
    release.set()   # the abandoned sample ends after its run has
    monkeypatch.setattr(service, "_sample", real)

    async def start_again():
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(functools.partial(serve_governor, governor(), backoff="off"))
                assert handle.stats()["backoff"]["signal"] in ("choosing", "none")
                nursery.cancel_scope.cancel()
    trio.run(start_again)
