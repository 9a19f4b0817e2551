"""Live: a test pattern and a file published in real time, served by the gateway from the publisher's record."""

import json
import re
import threading
import time

import pytest
import trio

from edge.gateway import Gateway
from edge.media import live
from edge.media import transcode as tc
from edge.media.errors import MediaError
from edge.media.ladder import parse_ladder, plan
from edge.store import Store
from edge.ipld.cid import CID
from edge.transport.http import serve_http

from tests.gateway.test_gateway import get
from tests.media.helpers import run_publisher


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


@pytest.mark.trio
async def test_live_window_served_while_cutting_then_recorded(store):
    stop = threading.Event()
    thread, box = run_publisher(store, "testsrc", name="cam", ladder="360p,240p", window=3, stop=stop,
                                opts=tc.Options(seconds=1.0, preset="ultrafast"))
    async with trio.open_nursery() as nursery:
        gw = Gateway(store)
        port = (await nursery.start(lambda task_status: serve_http(gw, 0, host="127.0.0.1",
                                                                   task_status=task_status))).port
        seen_sequences = []
        fetched = 0
        deadline = trio.current_time() + 60
        while len(set(seen_sequences)) < 3 and trio.current_time() < deadline:
            status, h, body = await get(port, "/streams/cam/360p/index.m3u8")
            if status == 200:
                text = body.decode()
                assert "#EXT-X-ENDLIST" not in text and h["cache-control"] == "no-cache"
                uris = re.findall(r"^(\d+\.m4s)$", text, re.M)
                assert len(uris) <= 3
                seen_sequences.append(int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1)))
                for uri in uris[-1:]:
                    status, h, seg = await get(port, f"/streams/cam/360p/{uri}")
                    assert status == 200 and h["content-type"] == "video/iso.segment"
                    assert h["x-ipfs-path"].split("/")[2] == str(content_cid(seg))
                    fetched += 1
            await trio.sleep(0.3)
        assert len(set(seen_sequences)) >= 3, f"the window did not slide: {seen_sequences}"
        assert seen_sequences == sorted(seen_sequences)
        status, _, body = await get(port, "/streams/cam/master.m3u8")
        text = body.decode()
        assert status == 200 and "RESOLUTION=640x360" in text and "RESOLUTION=426x240" in text
        assert 'TYPE=AUDIO' in text
        listed = json.loads((await get(port, "/api/streams"))[2])
        assert listed[0]["name"] == "cam" and listed[0]["kind"] == "live"
        stop.set()
        await trio.to_thread.run_sync(thread.join, 60)
        assert "error" not in box, box.get("error")
        # ended: the same name is now the whole broadcast, on demand
        status, _, body = await get(port, "/streams/cam/360p/index.m3u8")
        assert status == 200 and "#EXT-X-ENDLIST" in body.decode()
        assert len(re.findall(r"\.m4s", body.decode())) >= 3
        assert store.name("cam")["meta"]["kind"] == "vod"
        assert not [p for p in store.pins() if p["name"] == "live cam"]
        assert fetched >= 3
        nursery.cancel_scope.cancel()
    assert store.verify().ok


def content_cid(data):
    from edge.store import content
    from edge.store.importer import BalancedLayout
    from edge.ipld.cid import RAW
    layout = BalancedLayout(lambda c, b: None)
    for off in range(0, max(len(data), 1), 256 * 1024):
        leaf = data[off:off + 256 * 1024]
        layout.add_leaf(CID.for_block(leaf, RAW), len(leaf))
    return layout.finish().cid


def test_file_played_live_without_recording(media, store):
    summary = live.publish(store, media["av"], name="replay", ladder="240p", window=2, record=False,
                           opts=tc.Options(seconds=1.0, preset="ultrafast", duration=3.0))
    assert summary["segments"]["240p"] == 3 and "recording" not in summary
    assert store.name("replay") is None
    assert not store.pins()           # the window's pins went with it: GC may take the segments
    assert store.verify().ok


def test_rtmp_push(media, store):
    """An encoder pushes RTMP (Debian's ffmpeg CLI in the role of OBS) to the node, which listens."""
    import socket
    import subprocess
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"rtmp://127.0.0.1:{port}/live/key"
    thread, box = run_publisher(store, url, name="pushed", ladder="240p",
                                opts=tc.Options(seconds=1.0, preset="ultrafast", read_timeout=5.0))
    for _ in range(50):
        time.sleep(0.2)
        pushed = subprocess.run(["ffmpeg", "-v", "error", "-re", "-i", media["av"], "-c", "copy", "-f", "flv", url],
                                capture_output=True, text=True)
        if pushed.returncode == 0:
            break
    assert pushed.returncode == 0, pushed.stderr
    thread.join(60)
    assert "error" not in box, box.get("error")
    assert box["summary"]["segments"]["240p"] >= 4 and box["summary"]["segments"]["audio"] >= 4
    assert store.name("pushed")["meta"]["kind"] == "vod"


def test_bad_live_sources(store):
    with pytest.raises(MediaError, match="live sources are"):
        live.publish(store, "http://example.invalid/x", name="x")
    with pytest.raises(MediaError, match="no such file"):
        live.publish(store, "/nonexistent.mp4", name="x")
    with pytest.raises(MediaError, match="stream name"):
        live.publish(store, "testsrc", name="a/b")
    with pytest.raises(MediaError, match="window"):
        live.publish(store, "testsrc", name="w", window=1)


def test_a_sink_that_breaks_while_the_encoders_flush_ends_the_transcode_instead_of_hanging_it():
    """A live worker whose publisher has gone: the stop comes, the end mark reaches each encoder, and the
    encoder's last segments then fail to send (a broken pipe). The encoder thread used to wait for a second end
    mark that never came, and the decoding thread waited on it for ever (a decoder process found hung 30 min
    after its agent had stopped). Now the transcode ends with the encoder's error."""
    stop = threading.Event()

    class GoneAfterStop(tc.Sink):
        def __init__(self):
            self.segments = 0

        def init(self, track, data):
            pass

        def segment(self, track, seg):
            if stop.is_set():
                raise BrokenPipeError("the publisher is gone")
            self.segments += 1
            if self.segments >= 2:
                stop.set()

    graph, fmt, options, _ = live.source_spec(live.TEST_PATTERN, size="320x240", rate=25)
    rungs = parse_ladder("240p")
    outcome = []

    def run():
        try:
            tc.transcode(graph, lambda info: plan(rungs, info.video.width, info.video.height), GoneAfterStop(),
                         tc.Options(seconds=1.0, preset="ultrafast", live=True, duration=30), stop=stop,
                         input_options=options, input_format=fmt)
            outcome.append("returned")
        except MediaError as exc:
            outcome.append(str(exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the transcode hung after its sink broke during the encoders' last flush"
    assert outcome and "encoding 240p failed" in outcome[0] and "publisher is gone" in outcome[0], outcome
