"""The player page in headless Chromium (Debian's), served by a real gateway: VOD and live play, rungs switch."""

import threading

import pytest
import trio

from edge.gateway import Gateway
from edge.media import live, vod
from edge.media import transcode as tc
from edge.store import Store
from edge.transport.http import serve_http

from tests.media.conftest import media  # noqa: F401 - the session fixture
from .chromium import CHROMIUM, Browser

pytestmark = pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (`make test` installs it)")


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


def gateway_thread(store):
    """The gateway on its own Trio loop in a thread, so the test can drive the browser synchronously."""
    ready = threading.Event()
    box = {}

    async def main():
        async with trio.open_nursery() as nursery:
            box["cancel"] = nursery.cancel_scope
            box["token"] = trio.lowlevel.current_trio_token()
            box["port"] = (await nursery.start(lambda task_status: serve_http(
                Gateway(store), 0, host="127.0.0.1", task_status=task_status))).port
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    ready.wait(10)

    def stop():
        trio.from_thread.run_sync(box["cancel"].cancel, trio_token=box["token"])
        thread.join(10)
    return box["port"], stop


PLAYING = "document.querySelector('video').currentTime"


def test_vod_plays_and_switches_rungs(media, store):   # noqa: F811
    vod.import_file(store, media["av"], name="film", ladder="360p,240p",
                    opts=tc.Options(seconds=1.0, preset="ultrafast"))
    port, stop = gateway_thread(store)
    browser = Browser(f"http://127.0.0.1:{port}/watch/film/")
    try:
        browser.wait_for("window.hearth && window.hearth.levels.length === 2", what="the master playlist")
        start = browser.wait_for(f"{PLAYING} > 0.3 && {PLAYING}", what="playback to start")
        browser.wait_for(f"{PLAYING} > {start} + 0.5", what="currentTime to advance")
        heights = browser.evaluate("window.hearth.levels.map(l => l.height)")
        assert sorted(heights) == [240, 360]
        for height in (240, 360, 240):
            level = heights.index(height)
            browser.evaluate(f"window.hearth.setLevel({level})")
            browser.wait_for(f"window.hearth.playingLevel === {level}", what=f"a switch to {height}p")
            browser.wait_for(f"document.querySelector('video').videoHeight === {height}",
                             what=f"{height}p pictures")
        # this gateway has no WebRTC (and aiortc has no loopback candidates): the page fell back to HTTP
        assert browser.evaluate("window.hearth.transport") == "http"
        assert browser.evaluate("window.hearth.stats.http") > 4
        assert browser.evaluate("window.hearth.errors.filter(e => !e.includes('bufferStalled') && "
                                "!e.startsWith('webrtc unavailable')).length") == 0
    finally:
        browser.close()
        stop()


def test_live_plays(store):
    halt = threading.Event()
    box = {}
    publisher = threading.Thread(target=lambda: box.update(summary=live.publish(
        store, "testsrc", name="cam", ladder="240p", window=4, stop=halt,
        opts=tc.Options(seconds=1.0, preset="ultrafast"))), daemon=True)
    publisher.start()
    port, stop = gateway_thread(store)
    browser = None
    try:
        for _ in range(100):
            row = store.name("cam")
            if row and any(t["segments"] for t in row["meta"].get("tracks", [])) and \
                    len(row["meta"]["tracks"][0]["segments"]) >= 2:
                break
            threading.Event().wait(0.2)
        browser = Browser(f"http://127.0.0.1:{port}/watch/cam/")
        start = browser.wait_for(f"{PLAYING} > 0.2 && {PLAYING}", timeout=40, what="live playback to start")
        browser.wait_for(f"{PLAYING} > {start} + 1.5", timeout=30, what="live currentTime to advance")
        assert browser.evaluate("window.hearth.hls.levels[0].details.live") is True
    finally:
        if browser:
            browser.close()
        halt.set()
        publisher.join(60)
        stop()
    assert "summary" in box
