"""VOD import end to end: real FFmpeg through PyAV, outputs checked by Debian's ffprobe."""

import os
import random
import re

import av
import pytest

from edge.media import vod
from edge.media import transcode as tc
from edge.media.errors import MediaError
from edge.media.probe import probe
from edge.store import Store, content

from .conftest import ffprobe

SEG = 2.0


def export(store, cid, dest):
    content.get(store, str(cid), str(dest))
    return dest


def playlist_segments(path):
    text = open(path).read()
    return [(float(d), uri) for d, uri in re.findall(r"#EXTINF:([0-9.]+),\n(\S+)", text)], text


def first_frame(init, seg, tmp_path):
    joined = tmp_path / "joined.mp4"
    with open(joined, "wb") as f:
        f.write(open(init, "rb").read() + open(seg, "rb").read())
    frames = ffprobe(str(joined), "-select_streams", "v", "-show_frames", "-read_intervals", "%+#1",
                     "-show_entries", "frame=key_frame,pict_type,pts_time")["frames"]
    return frames[0]


def check_video_rendition(root, name, width, height, tmp_path):
    d = root / name
    segs, text = playlist_segments(d / "index.m3u8")
    assert "#EXT-X-ENDLIST" in text and '#EXT-X-MAP:URI="init.mp4"' in text
    target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", text).group(1))
    assert segs, "no segments"
    for i, (dur, uri) in enumerate(segs):
        assert round(dur) <= target
        if i < len(segs) - 1:
            assert abs(dur - SEG) <= 0.08, f"{name}/{uri} lasts {dur} s, not {SEG}"
        frame = first_frame(d / "init.mp4", d / uri, tmp_path)
        assert frame["key_frame"] == 1 and frame["pict_type"] == "I", f"{name}/{uri} does not start on a keyframe"
    info = ffprobe(str(d / "index.m3u8"), "-show_entries", "stream=codec_name,width,height,codec_type")
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert video and video[0]["codec_name"] == "h264"
    assert (video[0]["width"], video[0]["height"]) == (width, height)
    return [d for d, _ in segs]


def master_variants(root):
    text = open(root / "master.m3u8").read()
    return text, re.findall(r"#EXT-X-STREAM-INF:(.*)\n(\S+)", text)


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


def test_ladder_with_audio(media, store, tmp_path):
    opts = tc.Options(seconds=SEG, preset="ultrafast")
    result = vod.import_file(store, media["av"], name="demo", ladder="360p,240p", opts=opts)
    assert [r["name"] for r in result.renditions] == ["360p", "240p", "audio"]
    assert store.name("demo")["cid"] == str(result.cid) and store.is_pinned(result.cid)
    assert store.verify().ok
    root = export(store, result.cid, tmp_path / "out")
    d360 = check_video_rendition(root, "360p", 640, 360, tmp_path)
    d240 = check_video_rendition(root, "240p", 426, 240, tmp_path)
    assert d360 == d240, "segments differ in length between rungs: a player could not switch at boundaries"
    assert abs(sum(d360) - 5.0) < 0.1
    text, variants = master_variants(root)
    assert [uri for _, uri in variants] == ["360p/index.m3u8", "240p/index.m3u8"]
    for (attrs, _), res in zip(variants, ("640x360", "426x240")):
        assert f"RESOLUTION={res}" in attrs
        assert re.search(r'CODECS="avc1\.[0-9a-f]{6},mp4a\.40\.2"', attrs)
        assert int(re.search(r"BANDWIDTH=(\d+)", attrs).group(1)) > 100_000
        assert 'AUDIO="audio"' in attrs
    assert '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio"' in text
    audio = ffprobe(str(root / "audio" / "index.m3u8"), "-show_entries", "stream=codec_name,start_time")
    video = ffprobe(str(root / "360p" / "index.m3u8"), "-show_entries", "stream=codec_name,start_time")
    assert audio["streams"][0]["codec_name"] == "aac"
    # lips in sync: both tracks start at the same presentation time (within a frame)
    assert abs(float(audio["streams"][0]["start_time"]) - float(video["streams"][0]["start_time"])) < 0.04
    # the stream plays from its directory alone: relative URIs only
    assert "http" not in text and "/ipfs/" not in text


def test_no_upscaling_and_odd_shapes(media, store, tmp_path):
    opts = tc.Options(seconds=SEG, preset="ultrafast")
    four3 = vod.import_file(store, media["four3"], ladder="1080p,480p,360p", opts=opts)
    assert [(r["width"], r["height"]) for r in four3.renditions] == [(640, 480), (480, 360)]
    root = export(store, four3.cid, tmp_path / "four3")
    check_video_rendition(root, "480p", 640, 480, tmp_path)
    portrait = vod.import_file(store, media["portrait"], ladder="720p,240p", opts=opts)
    assert probe(media["portrait"]).video.rotation == 270 or probe(media["portrait"]).video.rotation == 90
    assert [(r["width"], r["height"]) for r in portrait.renditions] == [(240, 320)]
    check_video_rendition(export(store, portrait.cid, tmp_path / "portrait"), "240p", 240, 320, tmp_path)


def test_video_only_audio_only_vfr(media, store, tmp_path):
    opts = tc.Options(seconds=SEG, preset="ultrafast")
    silent = vod.import_file(store, media["noaudio"], ladder="360p", opts=opts)
    root = export(store, silent.cid, tmp_path / "silent")
    text, variants = master_variants(root)
    assert "EXT-X-MEDIA" not in text and len(variants) == 1 and 'CODECS="avc1.' in variants[0][0]
    assert not os.path.exists(root / "audio")
    check_video_rendition(root, "360p", 640, 360, tmp_path)

    sound = vod.import_file(store, media["audio"], opts=opts)
    root = export(store, sound.cid, tmp_path / "sound")
    text, variants = master_variants(root)
    assert variants == [(variants[0][0], "audio/index.m3u8")] and 'CODECS="mp4a.40.2"' in variants[0][0]
    segs, _ = playlist_segments(root / "audio" / "index.m3u8")
    assert abs(sum(d for d, _ in segs) - 5.0) < 0.1

    vfr = vod.import_file(store, media["vfr"], ladder="270p", opts=opts)
    durations = check_video_rendition(export(store, vfr.cid, tmp_path / "vfr"), "270p", 480, 270, tmp_path)
    assert abs(sum(durations) - 4.0) < 0.15


def test_random_bytes_read_as_a_raw_stream_with_no_picture_are_refused(tmp_path):
    # These bytes (seed 37) are what FFmpeg's h263 demuxer takes for a stream, with no picture it can decode;
    # about one random file in sixty is. The probe says so in one line, not "0x0" later in the ladder.
    path = tmp_path / "random.mp4"
    path.write_bytes(random.Random(37).randbytes(200_000))
    with av.open(str(path)) as c:
        assert c.format.name == "h263"          # what makes this case: FFmpeg opens it
    with pytest.raises(MediaError, match="not a media file FFmpeg can read .its h263 video has no picture"):
        probe(str(path))


@pytest.mark.parametrize("kind, words", [
    ("truncated", "not a media file FFmpeg can read"), ("garbage", "not a media file FFmpeg can read"),
    ("text", "not a media file FFmpeg can read"),
    ("unknown_codec", "cannot decode"),
])
def test_bad_inputs_fail_clearly_and_store_nothing(media, store, kind, words):
    before = (store.stat()["blocks"], store.pins(), store.names())
    with pytest.raises(MediaError) as err:
        vod.import_file(store, media[kind], opts=tc.Options(seconds=SEG, preset="ultrafast"))
    assert words in str(err.value) or "no video or audio" in str(err.value), str(err.value)
    assert os.path.basename(media[kind]) in str(err.value)
    assert (store.stat()["blocks"], store.pins(), store.names()) == before
    leftovers = [p for p in os.listdir(os.path.join(store.root, "tmp"))]
    for d in leftovers:
        assert not [n for n in os.listdir(os.path.join(store.root, "tmp", d)) if n.startswith("media-")]


def test_bad_options(media, store):
    with pytest.raises(MediaError, match="not a rung"):
        vod.import_file(store, media["av"], ladder="hd")
    with pytest.raises(MediaError, match="stream name"):
        vod.import_file(store, media["av"], name="../etc")
    with pytest.raises(MediaError, match="segment duration"):
        vod.import_file(store, media["av"], opts=tc.Options(seconds=0.2))
    with pytest.raises(MediaError, match="cannot be used here|unknown encoder"):
        vod.import_file(store, media["av"], opts=tc.Options(encoder="h264_nvenc_nonexistent"))


def test_reimport_replaces_name_and_frees_old_root(media, store):
    opts = tc.Options(seconds=SEG, preset="ultrafast")
    first = vod.import_file(store, media["noaudio"], name="same", ladder="240p", opts=opts)
    second = vod.import_file(store, media["noaudio"], name="same", ladder="360p", opts=opts)
    assert first.cid != second.cid
    assert not store.is_pinned(first.cid) and store.is_pinned(second.cid)
    store.drop_name("same")
    assert not store.is_pinned(second.cid) and store.name("same") is None
