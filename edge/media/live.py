"""`hearth live publish`: a live source transcoded into the ladder, each segment stored the moment it is cut.

The publisher is its own process beside the agent (a transcode never slows the agent's loop). It writes each
segment into the shared store as a block (or a small DAG), pins it, and records the stream's recent window in
the store's names table; the gateway builds live playlists from that record on each request, so a segment is
playable as soon as its record is committed. When the source ends (or on Ctrl-C/SIGTERM) the encoders are
flushed, and the whole broadcast is kept as an ordinary on-demand stream under the same name, unless
--no-record says to keep only the live window.

Sources: a file played at its own speed, `testsrc` (a test pattern with a tone), `rtmp://HOST:PORT/APP/KEY`
(this node listens; an encoder such as OBS pushes to it), and `srt://…` where this FFmpeg build has SRT.
"""

import logging
import os
import shutil
import threading
import time
from collections import deque

from edge.media import transcode as tc
from edge.media import vod
from edge.media.errors import MediaError
from edge.media.ladder import parse_ladder, plan
from edge.media.package import Segment
from edge.store.cid import parse_cid
from edge.store import content

log = logging.getLogger(__name__)

TEST_PATTERN = "testsrc"
KEEP_IN_RECORD = 4            # segments older than the window still listed, for players a little behind


def source_spec(source: str, size: str = "1280x720", rate: int = 30) -> tuple[str, str | None, dict, bool]:
    """(url, format, options, realtime) for av.open. MediaError for a protocol this build lacks."""
    if source == TEST_PATTERN:
        graph = f"testsrc2=size={size}:rate={rate}[out0];sine=frequency=440:sample_rate=48000[out1]"
        return graph, "lavfi", {}, True
    if source.startswith("rtmp://"):
        return source, "flv", {"listen": "1"}, False
    if source.startswith("srt://"):
        return source, None, {"mode": "listener"}, False
    if "://" in source:
        raise MediaError(f"{source}: live sources are a file, {TEST_PATTERN}, rtmp://HOST:PORT/APP/KEY or "
                         "srt://HOST:PORT")
    if not os.path.isfile(source):
        raise MediaError(f"{source}: no such file")
    return source, None, {}, True


class LiveSink(tc.Sink):
    """Stores segments as they are cut and publishes the window under the stream's name."""

    def __init__(self, store, name: str, seconds: float, window: int, record_dir: str | None):
        self.store = store
        self.name = name
        self.seconds = seconds
        self.window = window
        self.record_dir = record_dir
        self.pin_name = f"live {name}"
        self.lock = threading.Lock()
        self.tracks: dict[str, dict] = {}
        self.ended = False
        self.started = time.time()
        self.cut_latency: list[float] = []          # seconds from a segment's cut to its record committed

    def _track(self, track: tc.Track) -> dict:
        t = self.tracks.get(track.name)
        if t is None:
            t = self.tracks[track.name] = {
                "name": track.name, "kind": track.kind, "codec": track.codec, "width": track.width,
                "height": track.height, "frame_rate": track.frame_rate, "kbps": track.kbps, "init": None,
                "segments": deque(maxlen=self.window + KEEP_IN_RECORD)}
        return t

    def init(self, track, data):
        if self.record_dir:
            vod.DirectorySink(self.record_dir).init(track, data)
        cid = content.add_bytes(self.store, data, pin_name=self.pin_name).cid
        with self.lock:
            t = self._track(track)
            t["codec"] = track.codec
            t["init"] = str(cid)

    def segment(self, track, seg: Segment):
        cut = time.time()
        if self.record_dir:
            vod.DirectorySink(self.record_dir).segment(track, seg)
        cid = content.add_bytes(self.store, seg.data, pin_name=self.pin_name).cid
        with self.lock:
            t = self._track(track)
            dropped = t["segments"][0] if len(t["segments"]) == t["segments"].maxlen else None
            t["segments"].append({"index": seg.index, "duration": round(seg.duration, 6), "cid": str(cid),
                                  "bytes": len(seg.data), "cut": cut})
            self._publish()
        if dropped and not self.record_dir:
            self.store.unpin_named(self.pin_name, keep=self._live_cids())
        self.cut_latency.append(time.time() - cut)

    def _live_cids(self) -> set[str]:
        with self.lock:
            keep = {t["init"] for t in self.tracks.values() if t["init"]}
            keep |= {s["cid"] for t in self.tracks.values() for s in t["segments"]}
        return keep

    def meta(self) -> dict:
        return {"kind": "live", "ended": self.ended, "segment_seconds": self.seconds, "window": self.window,
                "started": self.started, "updated": time.time(),
                "tracks": [{**t, "segments": list(t["segments"])} for t in self.tracks.values() if t["init"]]}

    def _publish(self):
        meta = self.meta()
        if not meta["tracks"]:
            return
        first_init = meta["tracks"][0]["init"]
        self.store.set_name(self.name, parse_cid(first_init), "stream", meta, pin=False)

    def end(self):
        with self.lock:
            self.ended = True
            self._publish()


def publish(store, source: str, *, name: str, ladder: str = "720p,360p", opts: tc.Options | None = None,
            window: int = 6, record: bool = True, stop: threading.Event | None = None, progress=None,
            on_ready=None) -> dict:
    """Run a live stream until the source ends, `stop` is set, or opts.duration passes. Returns a summary."""
    vod.check_name(name)
    opts = opts or tc.Options(seconds=2.0)
    opts.live = True
    if not 1 <= opts.seconds <= 10:
        raise MediaError(f"a live segment duration of {opts.seconds} s is outside 1..10 s")
    if not 2 <= window <= 100:
        raise MediaError(f"a live window of {window} segments is outside 2..100")
    url, fmt, options, realtime = source_spec(source)
    opts.realtime = realtime
    rungs = parse_ladder(ladder)
    existing = store.name(name)
    if existing and existing["meta"].get("kind") == "live" and not existing["meta"].get("ended"):
        log.warning("stream %s was live and did not end cleanly (a crash?); starting it again", name)
    record_dir = store.scratch_dir("live-") if record else None
    sink = LiveSink(store, name, opts.seconds, window, record_dir)
    try:
        if on_ready:
            on_ready()
        # one open: the ladder is planned from the source's picture once it is open (a push's size is known
        # only when the publisher connects)
        _, tracks = tc.transcode(
            url, lambda info: plan(rungs, info.video.width, info.video.height) if info.video else [], sink, opts,
            progress=progress, stop=stop, input_options=options, input_format=fmt)
        sink.end()
        summary = {"name": name, "segments": {t.name: len(t.segments) for t in tracks},
                   "cut_to_listed_ms": _percentiles(sink.cut_latency)}
        if record and any(t.segments for t in tracks):
            vod.write_playlists(record_dir, tracks, opts.seconds)
            result = content.add(store, record_dir, pin=False)
            duration = max((s + d for t in tracks for _, s, d, _ in t.segments[-1:]), default=0.0)
            store.set_name(name, result.cid, "stream", {
                "kind": "vod", "recorded_live": True, "duration": duration,
                "tracks": [{"name": t.name, "kind": t.kind, "codec": t.codec, "width": t.width,
                            "height": t.height, "kbps": t.kbps, "segments": len(t.segments)} for t in tracks]})
            store.unpin_named(sink.pin_name)
            summary["recording"] = str(result.cid)
        elif not record:
            store.unpin_named(sink.pin_name)
            try:
                store.drop_name(name)
            except Exception:          # noqa: BLE001 - nothing was published
                pass
        return summary
    finally:
        if record_dir:
            shutil.rmtree(record_dir, ignore_errors=True)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {"p50": round(v[len(v) // 2] * 1000, 1), "max": round(v[-1] * 1000, 1), "count": len(v)}
