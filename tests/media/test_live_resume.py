"""A live transcode started part-way into a file (Options.start: a replaced live worker's successor resumes where
the last stored segment ended, edge/media/liveoffload.py): the seek lands on the keyframe at or before the start,
the frames before it are dropped, and the first picture out is the file's at the start, timed as in the file; a
LiveSink times the resumed encoder's segments on from the last one's end, so the stored timeline is the file's,
nothing repeated."""

import io

import av
import pytest

from edge.media import live, spotcheck
from edge.media import transcode as tc
from edge.media.ladder import parse_ladder, plan
from edge.store import Store

from tests.media.conftest import FFMPEG, ffmpeg

pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
RUNGS = parse_ladder("240p")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """4 s of 320x240 test pattern (moving: each moment looks different) and a tone; keyframes every 2 s only."""
    path = str(tmp_path_factory.mktemp("resume") / "src.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
           "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-shortest", path)
    return path


class Kept(tc.Sink):
    """Each track's init segment and segments, as cut."""

    def __init__(self):
        self.inits, self.segments = {}, {}

    def init(self, track, data):
        self.inits[track.name] = data

    def segment(self, track, seg):
        self.segments.setdefault(track.name, []).append(seg)


def _cut(src, sink, **options):
    _, tracks = tc.transcode(src, lambda info: plan(RUNGS, info.video.width, info.video.height), sink,
                             tc.Options(seconds=1.0, preset="ultrafast", live=True, **options))
    return tracks


def test_a_transcode_started_at_t_begins_with_the_source_at_t(source):
    with av.open(source) as c:
        keys = [float(p.pts * p.time_base) for p in c.demux(c.streams.video[0]) if p.is_keyframe and p.pts is not None]
    t = 1.5
    sink = Kept()
    _cut(source, sink, start=t)
    video = sink.segments["240p"]
    first = spotcheck.decode_thumbs(sink.inits["240p"] + video[0].data)
    landed = max(k for k in keys if k <= t)
    print(f"start {t} s: the seek lands on the keyframe at {landed} s (keyframes {keys}); the "
          f"{round((t - landed) * 25)} frames before {t} s are decoded and dropped; segments "
          f"{[(s.index, s.start, s.duration) for s in video]}")
    with av.open(io.BytesIO(sink.inits["240p"] + video[0].data)) as out:
        shown = next(out.decode(video=0)).time
    with av.open(io.BytesIO(sink.inits["audio"] + sink.segments["audio"][0].data)) as out:
        heard = next(out.decode(audio=0)).time
    print(f"the output's first picture is timed {shown} s, its first sound {heard} s")
    # the output's times are the file's (they go on from the replaced encoder's); its segments count from 0
    assert video[0].start == 0.0 and abs(shown - 1.52) < 0.001 and abs(heard - t) < 0.05
    assert [s.duration for s in video] == [1.0, 1.0, 0.48]   # cut every second from the start
    assert abs(sum(s.duration for s in video) - (4 - t)) < 0.1       # the rest of the file, no more
    there = spotcheck.decode_thumbs(source, spans=[(t, t + video[0].duration)])
    at_t = spotcheck.score(there, t, video[0].duration, first)
    # the pictures are the file's from t on: the first output picture is the file's at t (a frame either way at
    # most), and the segment is not the file's first second (what a restart from the beginning would show)
    nearest = max(spotcheck.psnr(first[0].pixels, s.pixels) for s in there if abs(s.time - t) <= 0.041)
    at_zero = spotcheck.score(spotcheck.decode_thumbs(source, spans=[(0, 1)]), 0.0, video[0].duration, first)
    print(f"first segment against the file at {t} s: {at_t:.1f} dB (first picture {nearest:.1f} dB); against "
          f"the file at 0 s: {at_zero:.1f} dB (threshold {spotcheck.THRESHOLD_DB} dB)")
    assert at_t >= spotcheck.THRESHOLD_DB and nearest >= spotcheck.THRESHOLD_DB
    assert at_zero < spotcheck.THRESHOLD_DB
    audio = sink.segments["audio"]
    assert abs(sum(s.duration for s in audio) - (4 - t)) < 0.2        # the sound from t too


def test_a_resumed_encoder_goes_on_where_the_last_stopped_and_a_start_past_the_end_cuts_nothing(source, tmp_path):
    with Store(str(tmp_path / "store")) as store:
        sink = live.LiveSink(store, "cam", 1.0, 8, None)
        stored = []                               # (start, duration) of each video segment as the sink timed it
        honest = sink.segment

        def segment(track, seg):
            seg = honest(track, seg)
            if track.kind == "video":
                stored.append((seg.start, seg.duration))
            return seg
        sink.segment = segment
        _cut(source, sink, duration=2.0)          # the first worker: 2 s, then it is replaced
        ended = stored[-1][0] + stored[-1][1]
        sink.discontinuity()
        _cut(source, sink, start=ended)           # its successor, from where the stored segments end
        print(f"stored video segments across the switch at {ended} s: {stored}")
        assert abs(ended - 2.0) < 1e-6 and len(stored) == 4 and abs(stored[2][0] - ended) < 1e-6
        assert abs(stored[-1][0] + stored[-1][1] - 4.0) < 0.05     # the file once, nothing twice
    assert _cut(source, Kept(), start=4.0) == []   # nothing left: the stream is over, no error


def test_the_requester_resumes_a_file_where_its_stored_video_ends_and_duration_counts_the_whole_stream():
    from edge.media.liveoffload import Offloaded
    run = Offloaded(None, None, None, source="clip.mp4", ladder="360p,240p",
                    opts=tc.Options(seconds=1.0, duration=10.0), record=False)
    assert run._resume_at() == 0.0 and run._remaining() == 10.0          # nothing cut yet: from the start
    run.tracks = {"360p": tc.Track("360p", "video"), "240p": tc.Track("240p", "video"),
                  "audio": tc.Track("audio", "audio")}
    run.tracks["360p"].segments = [(0, 0.0, 1.0, 9), (1, 1.0, 1.0, 9), (2, 2.0, 1.0, 9)]
    run.tracks["240p"].segments = [(0, 0.0, 1.0, 9), (1, 1.0, 1.0, 9)]   # the kill fell between the rungs' cuts
    run.tracks["audio"].segments = [(0, 0.0, 1.0213, 9), (1, 1.0213, 1.0213, 9), (2, 2.0426, 1.0213, 9)]
    assert run._resume_at() == 0.0                   # the test pattern (no file's CID) starts again
    run.cid = "bafy-the-file"
    # the end of the last video segment stored, on the rung furthest on (a rung one behind skips that segment,
    # so every rung's segment n stays the same span; the sound's segments are not cut at the pictures' times)
    assert run._resume_at() == 3.0 and run._remaining() == pytest.approx(10.0 - 3.0639)   # what is left of
    # --duration (of the stream as cut: the sound's last segment ends a little later)
    run.opts.duration = 0.0
    assert run._remaining() == 0.0                   # no --duration: until the file ends
