"""The pure parts of media: MP4 box parsing, the segmenter, playlists, ladder plans, HTTP ranges. Fuzzed."""

import io
import random

import av
import pytest
from hypothesis import given, settings, strategies as st

from edge.errors import DecodeError
from edge.gateway import Unsatisfiable, parse_range
from edge.media import bmff
from edge.media.errors import MediaError
from edge.media.ladder import parse_ladder, plan
from edge.media.package import Segmenter, bandwidths, master_playlist, media_playlist, Variant, AudioGroup


@pytest.fixture(scope="module")
def fmp4(media):
    """A real fragmented MP4 (video, keyframe every 25 frames) as FFmpeg's muxer writes it."""
    buf = io.BytesIO()
    src = av.open(media["noaudio"])
    out = av.open(buf, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
    vs = src.streams.video[0]
    s = out.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 160, 90, "yuv420p"
    s.codec_context.options = {"preset": "ultrafast", "x264-params": "keyint=25:min-keyint=25:scenecut=0"}
    for f in src.decode(vs):
        g = f.reformat(160, 90, "yuv420p")
        g.pts, g.time_base = f.pts, f.time_base
        g.pict_type = av.video.frame.PictureType.NONE
        for p in s.encode(g):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
    return buf.getvalue()


def cut(data, sizes):
    inits, segs = [], []
    seg = Segmenter(1.0, lambda b, t: inits.append((b, t)), segs.append)
    pos = 0
    for n in sizes:
        seg.write(data[pos:pos + n])
        pos += n
    seg.write(data[pos:])
    seg.close()
    return inits, segs


def test_segmenter_cuts_at_keyframes_whatever_the_write_sizes(fmp4):
    inits, segs = cut(fmp4, [len(fmp4)])
    assert len(inits) == 1 and inits[0][1].codec.startswith("avc1.") and inits[0][1].timescale > 0
    assert [s.index for s in segs] == list(range(len(segs))) and len(segs) == 3
    assert all(s.independent for s in segs)
    assert abs(sum(s.duration for s in segs) - 3.0) < 0.01
    assert inits[0][0] + b"".join(s.data for s in segs) == fmp4[:len(inits[0][0]) + sum(len(s.data) for s in segs)]
    rng = random.Random(7)
    for _ in range(5):
        sizes = [rng.randint(1, 5000) for _ in range(200)]
        again_inits, again = cut(fmp4, sizes)
        assert [s.data for s in again] == [s.data for s in segs] and again_inits[0][0] == inits[0][0]


def test_shift_decode_time(fmp4):
    inits, segs = cut(fmp4, [len(fmp4)])
    moof = bmff.box_at(segs[1].data, 0)
    frag = bmff.parse_moof(segs[1].data, moof.body, moof.end)
    shifted = bmff.shift_decode_time(segs[1].data[:moof.end], 1000)
    assert len(shifted) == moof.end
    assert bmff.parse_moof(shifted, 8, len(shifted)).decode_time == frag.decode_time + 1000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_box_parsers_on_random_bytes(data):
    for fn in (lambda: list(bmff.boxes(data)), lambda: bmff.parse_init(data),
               lambda: bmff.parse_moof(data, 0, len(data)), lambda: bmff.shift_decode_time(data, 5)):
        try:
            fn()
        except DecodeError:
            pass


def test_box_parsers_on_mutated_fmp4(fmp4):
    rng = random.Random(11)
    init_end = bmff.find(fmp4, [b"moov"]).end
    for _ in range(400):
        data = bytearray(fmp4[:init_end + 3000])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randint(0, len(data))])
        for fn in (lambda: bmff.parse_init(data), lambda: cut(data, [rng.randint(1, 999)] * 5)):
            try:
                fn()
            except DecodeError:
                pass


def test_playlists():
    text = media_playlist([("00000.m4s", 4.0), ("00001.m4s", 4.2), ("00002.m4s", 1.5)], init_uri="init.mp4",
                          target=4.0, ended=True, vod=True)
    assert "#EXT-X-TARGETDURATION:5" in text and text.endswith("#EXT-X-ENDLIST\n")
    assert text.count("#EXTINF:") == 3 and "#EXT-X-PLAYLIST-TYPE:VOD" in text
    live = media_playlist([("00007.m4s", 2.0)], init_uri="init.mp4", target=2.0, ended=False, media_sequence=7)
    assert "#EXT-X-MEDIA-SEQUENCE:7" in live and "ENDLIST" not in live
    master = master_playlist([Variant("720p/index.m3u8", 3_000_000, 2_500_000, "avc1.64001f,mp4a.40.2", 1280, 720,
                                      30.0)], AudioGroup("audio/index.m3u8"))
    assert "RESOLUTION=1280x720" in master and 'AUDIO="audio"' in master and "FRAME-RATE=30.000" in master
    # a 0.1 s tail segment does not set the peak; the average counts every byte
    assert bandwidths([(500_000, 4.0), (100, 0.1)]) == (1_000_000, int(500_100 * 8 / 4.1))


def test_ladder():
    rungs = parse_ladder("360p,1080p:6M,720p:2500k")
    assert [r.name for r in rungs] == ["1080p", "720p", "360p"] and rungs[0].kbps == 6000
    assert [(r.width, r.height) for r in plan(rungs, 1920, 1080)] == [(1920, 1080), (1280, 720), (640, 360)]
    assert [(r.width, r.height) for r in plan(rungs, 1080, 1920)] == [(1080, 1920), (720, 1280), (360, 640)]
    assert [(r.width, r.height) for r in plan(rungs, 1280, 720)] == [(1280, 720), (640, 360)]
    assert [(r.width, r.height) for r in plan(rungs, 320, 180)] == [(320, 180)]    # smaller than every rung
    for bad in ("", "720", "720p:fast", "10p", "720p,720p", "720p:1k"):
        with pytest.raises(MediaError):
            parse_ladder(bad)


def test_ranges():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=50-1000", 100) == (50, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None          # several: the whole is a valid answer
    for bad in ("bytes=100-", "bytes=5-4", "bytes=-0"):
        with pytest.raises(Unsatisfiable):
            parse_range(bad, 100)
