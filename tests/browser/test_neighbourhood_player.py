"""A stream imported on node A plays in Chromium from node B's /watch/NAME/ while A holds the only copy (issue 17):
B fetches the playlists and segments from A as the player asks for them. A, B and the browser each have a network
namespace on one bridge (real mDNS, CURVE, stores)."""

import signal
import time

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for
from tests.media.conftest import media  # noqa: F401 - the session fixture
from .chromium import CHROMIUM, Browser

why_not = can_use_netns() or (None if CHROMIUM else "Debian's chromium is not installed")
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")

PLAYING = "document.querySelector('video').currentTime"


@pytest.fixture
def lan():
    net = Lan(3)
    yield net
    net.close()


def test_a_stream_on_a_plays_from_b(lan, media, tmp_path):   # noqa: F811
    env = {"HEARTH_GATEWAY_PORT": "4800"}
    a, b = Node(lan.names[0], str(tmp_path / "a"), env), Node(lan.names[1], str(tmp_path / "b"), env)
    r = a.run("media", "import", media["av"], "--name", "film", "--ladder", "360p,240p", "--segment-seconds", "1",
              "--preset", "ultrafast", "-q")
    assert r.returncode == 0, r.stderr
    browser = None
    try:
        a.start()
        b.start()
        assert b.status()["store"]["blocks"] == 0   # A holds the only copy
        t0 = time.monotonic()
        wait_for("B listing A's film", lambda: b.status()["services"]["streams"]["neighbours"] == 1, timeout=30)
        print(f"\nB listed A's stream {time.monotonic() - t0:.1f} s after starting")
        browser = Browser(f"http://{lan.address(2)}:4800/watch/film/", prefix=["ip", "netns", "exec", lan.names[2]])
        t0 = time.monotonic()
        browser.wait_for("window.hearth && window.hearth.levels.length === 2", timeout=30, what="the master playlist")
        start = browser.wait_for(f"{PLAYING} > 0.3 && {PLAYING}", timeout=30, what="playback to start")
        print(f"playing from B {time.monotonic() - t0:.1f} s after the page opened")
        browser.wait_for(f"{PLAYING} > {start} + 1", timeout=30, what="currentTime to advance")
        listed = browser.evaluate("window.hearth.streams.map(s => [s.name, s.publisher, s.local])")
        assert listed == [["film", a.node_id, False]]
        assert browser.evaluate("document.getElementById('streams').textContent").startswith("film from ")
        errors = browser.evaluate("window.hearth.errors.filter(e => !e.includes('bufferStalled') && "
                                  "!e.startsWith('webrtc')).length")
        assert errors == 0, browser.evaluate("window.hearth.errors")
        fetched, served = b.status()["fetched"], a.status()["served"]
        assert fetched["blocks"] > 0 and served["blocks_served"] >= fetched["blocks"]
        print(f"B fetched {fetched['blocks']} blocks ({fetched['bytes']} bytes) from A; page stats "
              f"{browser.evaluate('window.hearth.stats')}")
    finally:
        if browser:
            browser.close()
        for node in (a, b):
            node.stop(signal.SIGKILL)
