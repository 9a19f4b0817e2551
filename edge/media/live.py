"""`hearth live publish`: a live source transcoded into the ladder, each segment stored the moment it is cut.

The publisher is its own process beside the agent (a transcode never slows the agent's loop). It writes each
segment into the shared store as a block (or a small DAG), pins it, and records the stream's recent window in
the store's names table; the gateway builds live playlists from that record on each request, so a segment is
playable as soon as its record is committed. When the source ends (or on Ctrl-C/SIGTERM) the encoders are
flushed, and the whole broadcast is kept as an ordinary on-demand stream under the same name, unless
--no-record says to keep only the live window.

Sources: a file played at its own speed, `testsrc` (a test pattern with a tone), `rtmp://HOST:PORT/APP/KEY`
(this node listens on HOST:PORT; an encoder such as OBS pushes to it with that app and key), and `srt://…`
where this FFmpeg build has SRT.

Untrusted media is decoded in a process of its own (edge/media/liveworker.py), not in this one, which holds
the store open (issue 20, finding 12): this process writes what the decoder sends (segments, already
packaged), so a decoder that crashes or hangs on a hostile stream is a broadcast that ends, not a store
writer that dies mid-write. A decoder that sends nothing (no segment, no progress) for `watchdog` seconds is
killed. An RTMP push reaches the decoder only through the gate (edge/media/rtmpgate.py), which checks the app
and the stream key before taking any media.
"""

import json
import logging
import math
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict

from edge.media import transcode as tc
from edge.media import vod
from edge.media.errors import MediaError
from edge.media.ladder import parse_ladder
from edge.media.package import Segment
from edge.media.rtmpgate import RtmpGate
from edge.ipld.cid import parse_cid
from edge.store import content

log = logging.getLogger(__name__)

TEST_PATTERN = "testsrc"
KEEP_IN_RECORD = 4            # segments older than the window still listed, for players a little behind
WATCHDOG = 30.0               # seconds a decoder may send nothing before it is taken for hung and killed
MAX_HEADER = 64 * 1024        # a frame's JSON header from the decoder
MAX_PAYLOAD = 64 * 1024 * 1024    # an init segment or segment (10 s of a 40 Mb/s 4K rung is 50 MB)
TRACK_NAME = re.compile(r"[A-Za-z0-9]{1,16}")
CODEC = re.compile(r"[A-Za-z0-9.]{1,64}")


def source_spec(source: str, size: str = "1280x720", rate: int = 30) -> tuple[str, str | None, dict, bool]:
    """(url, format, options, realtime) for av.open. MediaError for a protocol this build lacks."""
    if source == TEST_PATTERN:
        graph = f"testsrc2=size={size}:rate={rate}[out0];sine=frequency=440:sample_rate=48000[out1]"
        return graph, "lavfi", {}, True
    if source.startswith("rtmp://"):
        return "pipe:0", "flv", {}, False        # the gate hands the decoder the push as FLV on stdin
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

    def __init__(self, store, name: str, seconds: float, window: int, record_dir: str | None, on_data=None,
                 on_window=None):
        self.store = store
        self.on_data = on_data          # (cid, bytes, cut): a segment stored (the agent publishes it to neighbours)
        self.on_window = on_window      # (meta): the window changed; the agent keeps it in memory, the record in
        self.listed = False             # the store is written only when the stream starts and when it ends
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
        self.epoch = 0                  # discontinuities so far (a new encoder took over: edge/media/liveoffload.py)
        self._renumber: dict[str, tuple] = {}       # track -> (index, seconds) to add to its encoder's segments
        self._ends: dict[str, float] = {}           # track -> where its last segment ended (seconds)
        self.breaks: dict[str, dict[int, str | None]] = {}   # track -> {first index of an epoch: its own init file
        self._epoch_init: dict[str, str] = {}       # in the recording, or None}; track -> this epoch's init file

    def discontinuity(self) -> None:
        """The segments that follow come from another encoder (a replaced worker): their timestamps and indices
        start again. Each track's next segment is numbered on from its last and opens a new epoch, so the live
        playlist puts EXT-X-DISCONTINUITY (and the new init segment's EXT-X-MAP) before it."""
        with self.lock:
            self.epoch += 1
            self._renumber.clear()
            self._epoch_init.clear()
            for t in self.tracks.values():          # the gateway serves init.mp4 for the first epoch's segments
                t.setdefault("first_init", t["init"])

    def _track(self, track: tc.Track) -> dict:
        t = self.tracks.get(track.name)
        if t is None:
            t = self.tracks[track.name] = {
                "name": track.name, "kind": track.kind, "codec": track.codec, "width": track.width,
                "height": track.height, "frame_rate": track.frame_rate, "kbps": track.kbps, "init": None,
                "segments": deque(maxlen=self.window + KEEP_IN_RECORD)}
        return t

    def init(self, track, data):
        if self.record_dir and not self.epoch:
            vod.DirectorySink(self.record_dir).init(track, data)
        elif self.record_dir:                       # another encoder: its own init file if its init differs
            path = os.path.join(self.record_dir, track.name, vod.INIT)
            with open(path, "rb") as f:
                same = f.read() == data
            if not same:
                self._epoch_init[track.name] = f"init-{self.epoch}.mp4"
                with open(os.path.join(self.record_dir, track.name, self._epoch_init[track.name]), "wb") as f:
                    f.write(data)
        cid = self._store(data, time.time())
        with self.lock:
            t = self._track(track)
            t["codec"] = track.codec
            t["init"] = str(cid)

    def segment(self, track, seg: Segment):
        cut = time.time()
        with self.lock:
            t = self._track(track)
            if track.name not in self._renumber:    # the first segment of this epoch: numbered and timed on from
                last = t["segments"][-1]["index"] + 1 if t["segments"] else seg.index   # the last one's end
                end = self._ends.get(track.name, seg.start)
                self._renumber[track.name] = (last - seg.index, end - seg.start) if self.epoch else (0, 0.0)
                if self.epoch and t["segments"]:     # the recording's playlist marks the switch there too
                    self.breaks.setdefault(track.name, {})[last] = self._epoch_init.get(track.name)
            shift, later = self._renumber[track.name]
            if shift or later:
                seg = Segment(seg.index + shift, seg.start + later, seg.duration, seg.data, seg.independent)
            self._ends[track.name] = seg.start + seg.duration
        if self.record_dir:
            vod.DirectorySink(self.record_dir).segment(track, seg)
        cid = self._store(seg.data, cut)
        with self.lock:
            t = self._track(track)
            dropped = t["segments"][0] if len(t["segments"]) == t["segments"].maxlen else None
            record = {"index": seg.index, "duration": round(seg.duration, 6), "cid": str(cid),
                      "bytes": len(seg.data), "cut": cut}
            if self.epoch:                          # what the playlist needs to mark the switch
                record["epoch"], record["init"] = self.epoch, t["init"]
            t["segments"].append(record)
            self._publish()
        if dropped and not self.record_dir:
            self.store.unpin_named(self.pin_name, keep=self._live_cids())
        self.cut_latency.append(time.time() - cut)
        return seg

    def _store(self, data: bytes, cut: float):
        """Store data as a block (or a small DAG) pinned with the stream; the agent is told first, so neighbours
        have the segment while it is written here (the write is off the path to their players)."""
        made, blocks = content.bytes_dag(data)
        if self.on_data:
            self.on_data(made.cid, data, cut)
        content.put_dag(self.store, made, blocks, pin_name=self.pin_name)
        return made.cid

    def _live_cids(self) -> set[str]:
        with self.lock:
            keep = {t["init"] for t in self.tracks.values() if t["init"]}
            keep |= {s["cid"] for t in self.tracks.values() for s in t["segments"]}
        return keep

    def meta(self) -> dict:
        return {"kind": "live", "ended": self.ended, "segment_seconds": self.seconds, "window": self.window,
                "started": self.started, "updated": time.time(),
                "tracks": [{**t, "segments": list(t["segments"])} for t in self.tracks.values() if t["init"]]}

    def _publish(self, end: bool = False):
        meta = self.meta()
        if not meta["tracks"]:
            return
        if self.on_window:
            self.on_window(meta)
            if self.listed and not end:
                return
        self.listed = True
        first_init = meta["tracks"][0]["init"]
        self.store.set_name(self.name, parse_cid(first_init), "stream", meta, pin=False)

    def end(self):
        with self.lock:
            self.ended = True
            self._publish(end=True)


def publish(store, source: str, *, name: str, ladder: str = "720p,360p", opts: tc.Options | None = None,
            window: int = 6, record: bool = True, stop: threading.Event | None = None, progress=None,
            on_ready=None, watchdog: float = WATCHDOG, on_decoder=None, on_data=None, on_window=None) -> dict:
    """Run a live stream until the source ends, `stop` is set, or opts.duration passes. Returns a summary;
    "decoder_error" in it says why a decoder that failed mid-broadcast ended it (what came before is kept).
    on_decoder(pid) is called when the decoder process starts. Run by the agent (edge/media/liveservice.py),
    on_data(cid, bytes, cut) is told each segment stored and on_window(meta) each change of the window, which is
    then written to the store only when the stream starts and ends."""
    vod.check_name(name)
    opts = opts or tc.Options(seconds=2.0)
    opts.live = True
    if not 1 <= opts.seconds <= 10:
        raise MediaError(f"a live segment duration of {opts.seconds} s is outside 1..10 s")
    if not 2 <= window <= 100:
        raise MediaError(f"a live window of {window} segments is outside 2..100")
    url, fmt, options, realtime = source_spec(source)
    opts.realtime = realtime
    parse_ladder(ladder)                      # a bad ladder is the user's error, said before anything starts
    stop = stop or threading.Event()
    gate = RtmpGate(source) if source.startswith("rtmp://") else None
    if gate:
        gate.listen()
    existing = store.name(name)
    if existing and existing["meta"].get("kind") == "live" and not existing["meta"].get("ended"):
        log.warning("stream %s was live and did not end cleanly (a crash?); starting it again", name)
    record_dir = store.scratch_dir("live-") if record else None
    sink = LiveSink(store, name, opts.seconds, window, record_dir, on_data, on_window)
    try:
        if on_ready:
            on_ready()
        publisher = None
        if gate:
            publisher = gate.wait(stop)
            if publisher is None:
                return {"name": name, "segments": {}, "cut_to_listed_ms": {}}
        idle = opts.read_timeout or 10.0
        if publisher:
            opts.read_timeout = 0.0           # the gate watches the publisher's silence, not FFmpeg's pipe
        job = {"url": url, "input_format": fmt, "input_options": options, "ladder": ladder, "options": asdict(opts)}
        tracks, error = _run_decoder(job, sink, stop, progress, watchdog, publisher, idle, on_decoder)
        return finish(store, sink, tracks, error, record)
    finally:
        if gate:
            gate.close()
        if record_dir:
            shutil.rmtree(record_dir, ignore_errors=True)


def finish(store, sink: LiveSink, tracks: list[tc.Track], error: str | None, record: bool) -> dict:
    """End the stream sink received (tracks: what was cut, in ladder order): the window ended, the recording
    stored under the stream's name (or the name dropped with --no-record); the summary. MediaError when the
    decoder failed before any segment. Also run by edge/media/liveoffload.py for a stream cut elsewhere."""
    name, record_dir, seconds = sink.name, sink.record_dir, sink.seconds
    if error and not any(t.segments for t in tracks):
        raise MediaError(error)
    sink.end()
    summary = {"name": name, "segments": {t.name: len(t.segments) for t in tracks},
               "cut_to_listed_ms": _percentiles(sink.cut_latency)}
    if error:
        summary["decoder_error"] = error
    if record and any(t.segments for t in tracks):
        vod.write_playlists(record_dir, tracks, seconds)
        _mark_switches(record_dir, tracks, seconds, sink.breaks)
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


def _mark_switches(record_dir: str, tracks: list[tc.Track], seconds: float, breaks: dict) -> None:
    """Rewrite the recording's playlist of each track whose encoder was replaced (edge/media/liveoffload.py): an
    EXT-X-DISCONTINUITY (and that encoder's init file, where its init differs) before its first segment."""
    from edge.media.package import INDEX, INIT, media_playlist, segment_name
    for t in tracks:
        marks = breaks.get(t.name)
        if not marks or not t.segments:
            continue
        at = {index: i for i, (index, _, _, _) in enumerate(t.segments)}
        text = media_playlist([(segment_name(i), d) for i, _, d, _ in t.segments], init_uri=INIT, target=seconds,
                              ended=True, media_sequence=t.segments[0][0], vod=True,
                              breaks={at[index]: uri for index, uri in marks.items() if index in at})
        with open(os.path.join(record_dir, t.name, INDEX), "w") as f:
            f.write(text)


def _run_decoder(job: dict, sink: LiveSink, stop: threading.Event, progress, watchdog: float, publisher, idle: float,
                 on_decoder) -> tuple[list[tc.Track], str | None]:
    """Run the decoder process and store what it sends. (tracks in ladder order, why it failed or None)."""
    proc = subprocess.Popen([sys.executable, "-m", "edge.media.liveworker", json.dumps(job)],
                            stdin=subprocess.PIPE if publisher else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            start_new_session=True)      # a terminal's Ctrl-C reaches us; we tell it to stop
    if on_decoder:
        on_decoder(proc.pid)
    frames: queue.Queue = queue.Queue(4)
    threading.Thread(target=_read_frames, args=(proc.stdout, frames), name="decoder-out", daemon=True).start()
    ended = {}
    if publisher:
        def write(data: bytes):
            proc.stdin.write(data)
            proc.stdin.flush()                  # each tag at once: a live stream, not a file

        def feed():
            try:
                ended["why"] = publisher.pump(write, idle)
            except (BrokenPipeError, OSError, ValueError):
                ended["why"] = "the decoder stopped reading"
                publisher.close()
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        threading.Thread(target=feed, name="rtmp-pump", daemon=True).start()
    tracks: dict[str, tc.Track] = {}
    order: list[str] = []
    error = None
    done = False
    stopping = False
    heard = time.monotonic()
    try:
        while True:
            if stop.is_set() and not stopping:
                stopping = True
                if publisher:
                    publisher.close()             # the decoder sees the end of its input
                proc.terminate()                  # and SIGTERM: flush the encoders, cut the last segments
            try:
                kind, header, data = frames.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - heard > watchdog:
                    error = f"the decoder sent nothing for {watchdog:.0f} s (hung) and was stopped"
                    proc.kill()
                    break
                continue
            heard = time.monotonic()
            if kind == "eof":
                break
            if kind == "bad":
                error = f"the decoder sent a bad frame ({header}) and was stopped"
                proc.kill()
                break
            t = header.get("t")
            try:
                if t == "plan":
                    order = [n for n in header.get("tracks", []) if isinstance(n, str)][:16]
                elif t == "init":
                    track = _track(header.get("track"), tracks)
                    sink.init(track, data)
                elif t == "segment":
                    track = _track(header.get("track"), tracks)
                    seg = Segment(_number(header, "index", int, 10 ** 7), _number(header, "start", float, 1e9),
                                  _number(header, "duration", float, 1e5), data, bool(header.get("independent", True)))
                    seg = sink.segment(track, seg)       # numbered on after a switch of encoder
                    track.segments.append((seg.index, seg.start, seg.duration, len(data)))
                elif t == "progress" and progress is not None:
                    progress(tc.Progress(seconds=_number(header, "seconds", float, 1e9),
                                         frames=_number(header, "frames", int, 10 ** 12)))
                elif t == "done":
                    done = True
                    order = [n for n in header.get("tracks", []) if isinstance(n, str)][:16] or order
                elif t == "error":
                    error = str(header.get("message", "the decoder failed"))[:500]
            except ValueError as exc:
                error = f"the decoder sent a bad frame ({exc}) and was stopped"
                proc.kill()
                break
    finally:
        if publisher:
            publisher.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if error is None and not done:
        rc = proc.returncode
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        error = f"the decoder {how} before the end of the stream"
    if error:
        log.warning("live: %s", error)
    elif publisher:
        log.info("live: %s", ended.get("why", "the push ended"))
    ranked = [tracks[n] for n in order if n in tracks]
    ranked += [t for t in tracks.values() if t not in ranked]
    return ranked, error


def _read_frames(pipe, frames: queue.Queue):
    """Frames from the decoder's stdout onto the queue (bounded: a slow store slows the decoder)."""
    try:
        while True:
            raw = pipe.read(4)
            if len(raw) < 4:
                break
            n = struct.unpack(">I", raw)[0]
            if n > MAX_HEADER:
                frames.put(("bad", f"a header of {n} bytes", b""))
                return
            header = json.loads(pipe.read(n))
            size = header.get("size", 0) if isinstance(header, dict) else -1
            if not isinstance(size, int) or not 0 <= size <= MAX_PAYLOAD:
                frames.put(("bad", f"a payload of {size!r} bytes", b""))
                return
            data = pipe.read(size)
            if len(data) < size:
                break
            frames.put(("frame", header, data))
    except (ValueError, OSError) as exc:
        frames.put(("bad", f"{type(exc).__name__}", b""))
        return
    frames.put(("eof", {}, b""))


def _number(header: dict, key: str, kind, high):
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ValueError(f"{key} is not a number")
    if not (math.isfinite(value) and 0 <= value <= high):
        raise ValueError(f"{key} = {value} is out of range")
    return kind(value)


def _track(d, tracks: dict[str, tc.Track]) -> tc.Track:
    """The parent's own record of a track the decoder names (names become directory names: checked)."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not TRACK_NAME.fullmatch(d["name"]):
        raise ValueError("a track without a proper name")
    track = tracks.get(d["name"])
    if track is None:
        if len(tracks) >= 16 or d.get("kind") not in ("video", "audio"):
            raise ValueError("too many tracks, or one of no known kind")
        track = tracks[d["name"]] = tc.Track(d["name"], d["kind"], width=_number(d, "width", int, 16384),
                                             height=_number(d, "height", int, 16384),
                                             frame_rate=_number(d, "frame_rate", float, 1000),
                                             kbps=_number(d, "kbps", int, 10 ** 6))
    codec = d.get("codec")
    if isinstance(codec, str) and CODEC.fullmatch(codec):
        track.codec = codec
    return track


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {"p50": round(v[len(v) // 2] * 1000, 1), "max": round(v[-1] * 1000, 1), "count": len(v)}
