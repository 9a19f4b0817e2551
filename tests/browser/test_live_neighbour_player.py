"""A live test pattern run by node A's agent plays in Chromium from node B's gateway (issue 17): B follows the
stream on the live fan-out (PUB/SUB with CURVE) and serves the window and its segments from memory. A, B and the
browser each have a network namespace on one bridge (real mDNS, CURVE, stores)."""

import signal
import subprocess
import sys
import time

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for
from .chromium import CHROMIUM, Browser

why_not = can_use_netns() or (None if CHROMIUM else "Debian's chromium is not installed")
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")

PLAYING = "document.querySelector('video').currentTime"


@pytest.fixture
def lan():
    net = Lan(3)
    yield net
    net.close()


def test_a_live_stream_on_a_plays_from_b(lan, tmp_path):
    env = {"HEARTH_GATEWAY_PORT": "4820"}
    a, b = Node(lan.names[0], str(tmp_path / "a"), env), Node(lan.names[1], str(tmp_path / "b"), env)
    browser = live = None
    try:
        a.start()
        b.start()
        live = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", a.data_dir, "live", "publish", "testsrc",
                                 "--name", "cam", "--ladder", "240p", "--segment-seconds", "1", "--window", "6",
                                 "--preset", "ultrafast", "--no-record", "--duration", "60"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=a.env)
        wait_for("B listing A's live stream", lambda: b.status()["services"]["streams"]["neighbours"] == 1,
                 timeout=30)
        browser = Browser(f"http://{lan.address(2)}:4820/streams/cam@{a.node_id}/",
                          prefix=["ip", "netns", "exec", lan.names[2]])
        t0 = time.monotonic()
        start = browser.wait_for(f"{PLAYING} > 0.3 && {PLAYING}", timeout=40, what="live playback to start")
        print(f"\nplaying A's live stream from B {time.monotonic() - t0:.1f} s after the page opened")
        browser.wait_for(f"{PLAYING} > {start} + 2", timeout=30, what="currentTime to advance")
        assert browser.evaluate("window.hearth.hls.levels[0].details.live") is True
        fan = b.status()["services"]["fanout"]
        assert fan["following"][f"cam@{a.node_id}"]["source"] == a.node_id
        lat = sorted(fan["cut_to_playable_ms"])
        assert lat, fan
        print(f"B: cut -> playable p50 {lat[len(lat) // 2]} ms, max {lat[-1]} ms over {len(lat)} segments")
    finally:
        if browser:
            browser.close()
        if live is not None and live.poll() is None:
            live.kill()
        for node in (a, b):
            node.stop(signal.SIGKILL)
