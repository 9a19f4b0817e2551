"""Segments to a browser over a WebRTC data channel, every block checked against its CID in the page.

The node (`hearth run`) and Chromium each have a network namespace on one bridge: aiortc gathers no loopback
candidates, so a browser and a node on one host must meet over a real interface.
"""

import signal
import subprocess
import sys

import pytest

from tests.agent.netns import Lan, Node, can_use_netns
from tests.media.conftest import media  # noqa: F401 - the session fixture
from .chromium import CHROMIUM, Browser

why_not = can_use_netns() or (None if CHROMIUM else "Debian's chromium is not installed")
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")

PLAYING = "document.querySelector('video').currentTime"


@pytest.fixture
def lan():
    net = Lan(2)
    yield net
    net.close()


def test_segments_over_data_channel_verified_in_page(lan, media, tmp_path):   # noqa: F811
    node = Node(lan.names[0], str(tmp_path / "node"), {"HEARTH_GATEWAY_PORT": "4800", "HEARTH_MDNS": "false"})
    r = node.run("media", "import", media["av"], "--name", "film", "--ladder", "240p", "--segment-seconds", "1",
                 "--preset", "ultrafast", "-q")
    assert r.returncode == 0, r.stderr
    node.start()
    browser = None
    try:
        url = f"http://{lan.address(1)}:4800/watch/film/"
        browser = Browser(url, prefix=["ip", "netns", "exec", lan.names[1]])
        browser.wait_for("window.hearth && window.hearth.transport === 'webrtc'", timeout=20,
                         what="the data channel to open")
        start = browser.wait_for(f"{PLAYING} > 0.3 && {PLAYING}", timeout=30, what="playback")
        browser.wait_for(f"{PLAYING} > {start} + 1", what="currentTime to advance")
        browser.wait_for("window.hearth.stats.webrtc >= 3", what="segments over the data channel")
        stats = browser.evaluate("window.hearth.stats")
        assert stats["mismatches"] == 0 and stats["verified"] >= stats["webrtc"] and stats["fallbacks"] == 0
        # a file fetched on demand by CID, verified block by block
        size = browser.evaluate("window.hearth.fetchVerified('240p/00001.m4s')", await_promise=True)
        cids = browser.evaluate("window.hearth.cids")
        assert size > 0 and "240p/init.mp4" in cids and "audio/00000.m4s" in cids
        # a peer that lies is caught: the page refuses bytes that do not match the CID
        caught = browser.evaluate("""
            HearthBlocks.fetchFile(window.hearth.cids['240p/00001.m4s'],
                async (c) => { const b = await window.hearth.channel.block(c); b[b.length >> 1] ^= 1; return b; },
                {verified: 0, mismatches: 0})
              .then(() => 'accepted', (e) => e.message)""", await_promise=True)
        assert "does not match its CID" in caught
        # the same SHA-256 the page falls back to where crypto.subtle is missing (plain HTTP on a LAN)
        digest = browser.evaluate("Array.from(HearthBlocks.sha256js(new TextEncoder().encode('abc')))"
                                  ".map(b => b.toString(16).padStart(2, '0')).join('')")
        assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        # a channel that lies for every block: each segment falls back to HTTP (hls.js's loader refuses a second
        # load unless the page resets it) and playback goes on
        browser.evaluate("""(() => {
            const ch = window.hearth.channel, block = ch.block.bind(ch);
            ch.block = async (c) => { const b = await block(c); b[b.length >> 1] ^= 1; return b; };
            const hls = window.hearth.hls;
            hls.trigger(Hls.Events.BUFFER_FLUSHING, {startOffset: 0, endOffset: Number.POSITIVE_INFINITY,
                                                     type: null});
            document.querySelector('video').currentTime = 0;
            return true; })()""")
        browser.wait_for("window.hearth.stats.fallbacks >= 1", timeout=20, what="a fallback to HTTP")
        browser.wait_for(f"{PLAYING} > 1", timeout=30, what="playback after falling back to HTTP")
        stats = browser.evaluate("window.hearth.stats")
        assert stats["mismatches"] >= 1 and not any("only be used once" in e
                                                    for e in browser.evaluate("window.hearth.errors"))
        status = node.status()
        assert status["gateway_port"] == 4800
        metrics = subprocess.run(["ip", "netns", "exec", lan.names[0], sys.executable, "-c",
                                  "import urllib.request;print(urllib.request.urlopen("
                                  "'http://127.0.0.1:4802/metrics').read().decode())"],
                                 capture_output=True, text=True).stdout
        served = [l for l in metrics.splitlines() if l.startswith("hearth_webrtc_bytes_total")]
        assert served and float(served[0].split()[1]) > 0
    finally:
        if browser:
            browser.close()
        node.stop(signal.SIGTERM)
