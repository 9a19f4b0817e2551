"""Decode once, encode the ladder: one worker thread per video rendition, audio encoded once beside them.

The caller's thread demuxes and decodes; each rendition's thread scales, encodes and muxes into a
fragmented MP4 that a Segmenter cuts into CMAF segments. Keyframes are forced at the same instants in
every rendition (the first frame at or after each multiple of the segment duration), so segments line up
across rungs and a player can switch between them at any boundary. Audio is one AAC rendition shared by
all rungs (an HLS audio group), encoded once and stored once.

A transcode may start part-way into a file (Options.start: where a replaced live worker's successor resumes):
it seeks to the keyframe at or before that point and drops the frames decoded before it, so the first picture
out is the file's first at or after it; the output's timestamps are the file's there (they go on from those of
the encoder it replaces), its segments' starts count from it (0), as a LiveSink expects of a new encoder.
"""

import dataclasses
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction

from edge.governor import memory
from edge.media import encoders
from edge.media.errors import MediaError
from edge.media.package import Track  # noqa: F401 (the packager's; transcoding fills it in)
from edge.media.ladder import Rendition
from edge.media.package import Segment, Segmenter
from edge.media.probe import MediaInfo, describe, open_input

log = logging.getLogger(__name__)

QUEUE_FRAMES = 4
NICE = 10          # the priority an import's encoders drop to while the box is busy
AUDIO_NAME = "audio"
MOVFLAGS_VIDEO = "frag_keyframe+empty_moov+default_base_moof+skip_trailer+negative_cts_offsets"
MOVFLAGS_AUDIO = "empty_moov+default_base_moof+skip_trailer"
MAX_BAD_PACKETS = 1000
# PyAV (`import av`) is imported by the functions that transcode, not by this module: it costs an agent ~17 MiB
# of resident memory (FFmpeg's libraries), and an agent imports this module whether or not it ever transcodes
# (tests/agent/test_idle_footprint.py)


class Cancelled(MediaError):
    """The transcode was stopped on request (the agent is shutting down, or the user pressed Ctrl-C)."""


class Sink:
    """Where segments go: the VOD importer writes files, live ingest stores and announces them."""

    def init(self, track: Track, data: bytes) -> None:
        raise NotImplementedError

    def segment(self, track: Track, seg: Segment) -> None:
        raise NotImplementedError


@dataclass
class Options:
    seconds: float = 4.0            # segment duration
    encoder: str = "auto"
    preset: str = "veryfast"
    threads: int = 0                # per encoder; 0: sized to the memory budget (edge/governor/memory.py)
    live: bool = False
    realtime: bool = False          # pace reading at the source's own speed (a file played as live)
    audio_kbps: int = 128
    first_index: int = 0
    duration: float = 0.0           # stop after this much of the source (0: at its end)
    read_timeout: float = 0.0       # a live source silent this long has ended (0: wait for ever)
    start: float = 0.0              # seconds into a file (from its first picture) to start at: a replaced live
                                    # worker's successor resumes there (_seek_to)


@dataclass
class Progress:
    seconds: float = 0.0            # of the source done
    duration: float = 0.0
    frames: int = 0
    started: float = field(default_factory=time.monotonic)
    bad_packets: int = 0

    @property
    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


class _Output:
    """A track's muxer output: the segmenter's callbacks record the segment and hand it to the sink."""

    track: Track
    sink: Sink

    def _on_init(self, data, track):
        self.track.codec = track.codec
        self.sink.init(self.track, data)

    def _on_segment(self, seg: Segment):
        self.track.segments.append((seg.index, seg.start, seg.duration, len(seg.data)))
        self.sink.segment(self.track, seg)


class _VideoWorker(threading.Thread, _Output):
    def __init__(self, rendition: Rendition, enc: encoders.EncoderStatus, opts: Options, fps: float,
                 time_base: Fraction, sink: Sink, lookahead: int = 0):
        import av
        from av.video.reformatter import VideoReformatter
        super().__init__(name=f"encode-{rendition.name}", daemon=True)
        self.key_pict, self.no_pict = av.video.frame.PictureType.I, av.video.frame.PictureType.NONE
        self.rendition = rendition
        self.track = Track(rendition.name, "video", width=rendition.width, height=rendition.height,
                           frame_rate=fps, kbps=rendition.kbps)
        self.queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self.error: BaseException | None = None
        self.sink = sink
        self.segmenter = Segmenter(opts.seconds, self._on_init, self._on_segment, opts.first_index)
        self.out = av.open(self.segmenter, "w", format="mp4",
                           options={"movflags": MOVFLAGS_VIDEO, "avoid_negative_ts": "disabled"})
        rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(30)
        stream = self.out.add_stream(enc.name, rate=rate)
        cc = stream.codec_context
        cc.width, cc.height = rendition.width, rendition.height
        cc.pix_fmt = enc.pix_fmt
        cc.time_base = time_base
        stream.time_base = time_base
        cc.bit_rate = rendition.kbps * 1000
        if opts.threads:
            cc.thread_count = opts.threads
        cc.options = encoders.options_for(enc, rendition.kbps, rendition.maxrate_kbps, rendition.bufsize_kbits,
                                          fps, opts.seconds, opts.live, opts.preset)
        if lookahead and "x264-params" in cc.options:   # the memory budget's: fewer pictures in flight
            cc.options = {**cc.options, "x264-params": f"{cc.options['x264-params']}:rc-lookahead={lookahead}"}
        self.nice = not opts.live and memory.busy()   # a file's import yields the CPU on a busy box
        self.started = bool(opts.start)     # part-way into a file: its fragments timed as the file (run())
        self.stream = stream
        self.pix_fmt = enc.pix_fmt
        self.delay: float | None = None     # seconds the muxer will shift pictures by (B-frame reordering)
        self.scaler = VideoReformatter()     # one per thread: a reformatter is not safe to share

    def run(self):
        if self.nice:   # this thread, and the encoder's threads it starts, at a lower priority
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
            except OSError:
                pass
        ended = False                    # the producer's end mark (None) taken: it sends no other
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    ended = True
                    break
                frame, key = item
                if self.started and not self.segmenter.shift_seconds:   # the muxer times its first at 0
                    self.segmenter.shift_seconds = float(frame.pts * frame.time_base)
                out = self.scaler.reformat(frame, self.rendition.width, self.rendition.height, self.pix_fmt,
                                           interpolation="BICUBIC")
                out.pts = frame.pts
                out.time_base = frame.time_base
                out.pict_type = self.key_pict if key else self.no_pict
                for packet in self.stream.encode(out):
                    if self.delay is None:
                        self.delay = float(max(0, -packet.dts) * packet.time_base) if packet.dts is not None else 0.0
                    self.out.mux(packet)
            for packet in self.stream.encode(None):
                self.out.mux(packet)
            self.out.close()
            self.segmenter.close()
        except BaseException as exc:     # noqa: BLE001 - handed to the decoding thread, which raises it
            self.error = exc
            while not ended:             # keep the producer from blocking on a dead worker, until its end mark
                try:
                    if self.queue.get(timeout=0.1) is None:
                        break
                except queue.Empty:
                    continue


class _Audio(_Output):
    """AAC at 44.1 or 48 kHz, mono or stereo, in its own fragmented MP4 (fragments of about a segment)."""

    def __init__(self, info, opts: Options, sink: Sink):
        import av
        rate = info.sample_rate if info.sample_rate in (44100, 48000) else 48000
        layout = "mono" if info.channels == 1 else "stereo"
        self.track = Track(AUDIO_NAME, "audio", kbps=opts.audio_kbps)
        self.sink = sink
        self.segmenter = Segmenter(opts.seconds, self._on_init, self._on_segment, opts.first_index)
        self.out = av.open(self.segmenter, "w", format="mp4",
                           options={"movflags": MOVFLAGS_AUDIO, "frag_duration": str(int(opts.seconds * 1e6))})
        self.stream = self.out.add_stream("aac", rate=rate)
        cc = self.stream.codec_context
        cc.layout = layout
        cc.format = "fltp"
        cc.bit_rate = opts.audio_kbps * 1000 * (1 if layout == "mono" else 2) // 2
        self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=1024)
        self.rate = rate
        self.next_pts: int | None = None
        self.first_pts = 0                  # the first sample's (a transcode started part-way: not 0)
        self.started = bool(opts.start)
        self.delay = None                   # the pictures' delay, to be added to the sound
        self.pending: list = []

    def set_delay(self, seconds: float):
        """Line the sound up with the pictures. The muxer starts every track at decode time 0 and a CMAF
        fragment has no edit list, so pictures from an encoder with B-frames appear late by its reordering
        delay, and AAC's priming samples make the sound early by their length: shift the sound's decode
        times by both."""
        self.delay = seconds
        priming = 0.0
        if self.pending and self.pending[0].dts is not None and self.pending[0].dts < self.first_pts:
            priming = float((self.first_pts - self.pending[0].dts) * self.pending[0].time_base)
        self.segmenter.shift_seconds = seconds + priming + (self.first_pts / self.rate if self.started else 0.0)
        for packet in self.pending:
            self._mux(packet)
        self.pending = []

    def _mux(self, packet):
        self.out.mux(packet)

    def push(self, frame, origin: float):
        if self.next_pts is None:
            start = (frame.time - origin) if frame.time is not None else 0.0
            self.next_pts = max(0, int(round(start * self.rate)))
            self.first_pts = self.next_pts if self.started else 0   # (not started: as before, priming from 0)
        frame.pts = None            # the resampler's own clock: contiguous samples, no gaps from jitter
        for out in self.resampler.resample(frame):
            self._encode(out)

    def _encode(self, out):
        out.pts = self.next_pts
        out.time_base = Fraction(1, self.rate)
        self.next_pts += out.samples
        for packet in self.stream.encode(out):
            if self.delay is None:
                self.pending.append(packet)
            else:
                self._mux(packet)

    def finish(self, delay: float = 0.0):
        if self.next_pts is not None:
            for out in self.resampler.resample(None):
                self._encode(out)
        if self.delay is None:
            self.set_delay(delay)
        for packet in self.stream.encode(None):
            self._mux(packet)
        self.out.close()
        self.segmenter.close()


def _rotate_graph(stream, frame, degrees: int):
    import av
    graph = av.filter.Graph()
    src = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                           time_base=stream.time_base)
    chain = [src]
    if degrees == 90:
        chain.append(graph.add("transpose", "clock"))
    elif degrees == 270:
        chain.append(graph.add("transpose", "cclock"))
    else:
        chain += [graph.add("hflip"), graph.add("vflip")]
    chain.append(graph.add("buffersink"))
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def transcode(source: str, renditions, sink: Sink, opts: Options, *,
              progress=None, cancel: threading.Event | None = None, stop: threading.Event | None = None,
              input_options: dict | None = None, input_format: str | None = None) -> tuple[MediaInfo, list[Track]]:
    """Transcode source into the renditions (and one audio track), handing segments to sink as they are cut.
    renditions is a list, or a function of the source's MediaInfo returning one (for a source whose picture
    size is known only once it is open: a live push).

    cancel aborts (MediaError); stop ends the stream early but properly: the encoders are flushed and the
    last segments cut, as at the end of the source.

    Returns the source's description and the tracks made. MediaError for an unreadable source, a codec this
    build cannot decode, or a source with nothing decodable in it.
    """
    enc = encoders.choose(opts.encoder)
    container = open_input(source, input_options, input_format,
                           timeout=(None, opts.read_timeout) if opts.read_timeout else None)
    try:
        for s in container.streams.video:
            s.thread_type = "AUTO"      # frame threads: the decoder must keep up with several encoders
        info = describe(container, source)
        if info.video is None and info.audio is None:
            raise MediaError(f"{source} holds no video or audio stream FFmpeg can decode")
        if info.video and (not opts.live or os.path.isfile(source)) and container.format.name != "lavfi" \
                and not opts.start:     # (a start seeks there itself)
            container.seek(0)           # describe() decoded the first picture (a file played live: its timeline
                                        # is the file's from its first picture, where a successor resumes)
        if callable(renditions):
            renditions = renditions(info)
        return info, _run(container, info, source, renditions if info.video else [], enc, sink, opts,
                          progress, cancel, stop)
    finally:
        container.close()


def _seek_to(container, stream, start: float, source: str) -> float:
    """Seek to the keyframe at or before `start` seconds after the stream's first picture (its start_time); the
    absolute time of start (the caller drops the frames decoded before it, so the first kept is the first at or
    after start, within a millisecond)."""
    import av
    first = float(stream.start_time * stream.time_base) if stream.start_time is not None else (
        container.start_time / av.time_base if container.start_time else 0.0)
    target = first + start
    try:
        container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{source} cannot be started {start:g} s in: {exc}") from None
    return target


def _run(container, info, source, renditions, enc, sink, opts, progress, cancel, stop):
    import av
    vstream = container.streams[info.video.index] if info.video else None
    astream = container.streams[info.audio.index] if info.audio else None
    for s, what in ((vstream, "video"), (astream, "audio")):
        if s is not None and s.codec_context is None:
            raise MediaError(f"{source}: this FFmpeg build cannot decode its {what} codec")
    fps = info.video.fps if info.video else 0.0
    lookahead = 0   # the encoder's own
    if renditions and not opts.threads and not opts.live:   # sized to the memory budget (cgroup, else RAM)
        fit = memory.plan_transcode([(r.width, r.height) for r in renditions])
        opts = dataclasses.replace(opts, threads=fit.threads)
        lookahead = fit.lookahead if fit.threads else 0   # threads 0: it all fits, the encoder chooses both
        log.info("transcode sized to the memory budget: %s", fit.as_dict())
    workers = [_VideoWorker(r, enc, opts, fps, vstream.time_base, sink, lookahead) for r in renditions]
    audio = _Audio(info.audio, opts, sink) if astream is not None else None
    prog = progress_state = Progress(duration=info.duration)
    for w in workers:
        w.start()
    streams = [s for s in (vstream, astream) if s is not None]
    origin = None
    next_boundary = opts.start          # keyframes every opts.seconds from the first picture (or the start)
    last_pts = None
    rotation = info.video.rotation if info.video else 0
    rotator = None
    wall_start = time.monotonic()
    decoded = 0
    finished = False

    def check():
        if cancel is not None and cancel.is_set():
            raise Cancelled("transcoding stopped on request")
        for w in workers:
            if w.error is not None:
                raise MediaError(f"encoding {w.rendition.name} failed: {w.error}") from w.error

    def send_video(frame):
        nonlocal origin, next_boundary, last_pts, decoded
        if frame.pts is None:
            return
        t = float(frame.pts * frame.time_base)
        if origin is None:
            origin = t if zero is None else zero
        if last_pts is not None and frame.pts <= last_pts:
            return                      # a duplicate or backwards timestamp: the muxer would refuse it
        last_pts = frame.pts
        rel = t - origin
        if opts.duration and rel - opts.start >= opts.duration - 1e-6:
            nonlocal finished
            finished = True
            return
        key = rel >= next_boundary - 1e-6
        if key:
            while next_boundary <= rel + 1e-6:
                next_boundary += opts.seconds
        frame.pts = frame.pts - int(round(origin / frame.time_base))
        for w in workers:
            while True:
                try:
                    w.queue.put((frame, key), timeout=0.2)
                    break
                except queue.Full:
                    check()
        decoded += 1
        prog.frames = decoded
        prog.seconds = rel - opts.start

    skip = zero = None
    if opts.start:      # the output's times are the file's (from its first picture): they go on from the last
        target = _seek_to(container, vstream or astream, opts.start, source)   # encoder's, where it stopped
        skip, zero = target - 1e-3, target - opts.start
    starts_at = skip
    dropped = 0                         # frames before opts.start, decoded from the keyframe the seek landed on

    try:
        for packet in container.demux(streams):
            check()
            if (stop is not None and stop.is_set()) or finished:
                break
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                prog.bad_packets += 1
                if prog.bad_packets > MAX_BAD_PACKETS:
                    raise MediaError(f"{source} is too damaged to transcode ({prog.bad_packets} unreadable "
                                     "packets)") from None
                continue
            for frame in frames:
                if skip is not None and packet.stream is (vstream or astream):
                    if frame.time is not None and frame.time < skip:
                        dropped += 1
                        continue        # before the start: decoded only to reach it
                    log.info("%s started at %.3f s: %d frame(s) from the keyframe before it dropped", source,
                             opts.start, dropped)
                    skip = None
                if packet.stream is vstream:
                    if rotation:
                        if rotator is None:
                            rotator = _rotate_graph(vstream, frame, rotation)
                        rotator.push(frame)
                        frame = rotator.pull()
                    if opts.realtime and frame.time is not None and origin is not None:
                        ahead = (frame.time - origin - opts.start) - (time.monotonic() - wall_start)
                        if ahead > 0:
                            time.sleep(ahead)
                    send_video(frame)
                elif audio is not None:
                    if origin is None and (vstream is None or (starts_at is not None and frame.time is not None
                                                               and frame.time >= starts_at)):
                        origin = (frame.time or 0.0) if zero is None else zero   # (the sound from the start too)
                    if origin is None:
                        continue        # audio before the first picture: dropped so the tracks start together
                    if audio.delay is None and workers and workers[0].delay is not None:
                        audio.set_delay(workers[0].delay)
                    audio.push(frame, origin)
                    if vstream is None:
                        prog.seconds = (frame.time or 0.0) - origin - opts.start
                        if opts.duration and prog.seconds >= opts.duration:
                            finished = True
                        if opts.realtime:
                            ahead = prog.seconds - (time.monotonic() - wall_start)
                            if ahead > 0:
                                time.sleep(ahead)
            if progress is not None:
                progress(prog)
    except av.FFmpegError as exc:
        if not (opts.live and (decoded or (audio is not None and audio.next_pts))):
            raise MediaError(f"reading {source} failed: {exc.strerror or exc}") from None
        # a pushed stream ends when its publisher hangs up or goes silent: that is the end of the broadcast
        log.info("live source %s ended: %s", source, exc.strerror or exc)
    finally:
        for w in workers:
            while w.is_alive():
                try:
                    w.queue.put(None, timeout=0.2)
                    break
                except queue.Full:
                    continue
        for w in workers:
            w.join()
    for w in workers:
        if w.error is not None:
            raise MediaError(f"encoding {w.rendition.name} failed: {w.error}") from w.error
    if opts.start and (decoded == 0 if vstream is not None else audio.next_pts is None):
        log.info("%s ends before %.3f s: nothing left to cut", source, opts.start)
        return []                       # a successor asked to start at the very end: the stream is over
    if vstream is not None and decoded == 0:
        raise MediaError(f"{source}: no video frame could be decoded (the file is corrupt or truncated)")
    tracks = [w.track for w in workers]
    if audio is not None:
        audio.finish(workers[0].delay or 0.0 if workers else 0.0)
        if audio.track.segments:
            tracks.append(audio.track)
    if progress is not None:
        progress(progress_state)
    return tracks
