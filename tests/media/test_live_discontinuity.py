"""A live stream whose encoder is replaced mid-stream (edge/media/liveoffload.py): LiveSink numbers the new
encoder's segments on from the last, and the live playlist marks the switch with EXT-X-DISCONTINUITY and the new
init segment's EXT-X-MAP; ffprobe reads the window across it. And the live speed `--on auto` decides by, measured
on first use and kept."""

import re

import pytest

from edge.discovery.streams import entry_of_row
from edge.gateway.streams import _live_cids, live_meta, live_playlist
from edge.identity import Identity
from edge.media import live
from edge.media import transcode as tc
from edge.media.ladder import parse_ladder, plan
from edge.media.package import segment_name
from edge.store import Store, content
from edge.wire.streamentry import parse_entry, serialize_entry

from tests.media.conftest import FFPROBE, ffprobe

pytestmark = pytest.mark.skipif(FFPROBE is None, reason="ffprobe is not installed")


def _encode(sink, seconds):
    graph, fmt, options, _ = live.source_spec(live.TEST_PATTERN, size="320x240", rate=25)
    rungs = parse_ladder("240p")
    tc.transcode(graph, lambda info: plan(rungs, info.video.width, info.video.height), sink,
                 tc.Options(seconds=1.0, preset="ultrafast", live=True, duration=seconds),
                 input_options=options, input_format=fmt)


def test_a_switched_encoder_continues_the_numbering_and_the_playlist_marks_it(tmp_path):
    with Store(str(tmp_path / "store")) as store:
        sink = live.LiveSink(store, "cam", 1.0, 8, None)
        starts = []
        honest = sink.segment
        sink.segment = lambda track, seg: starts.append(honest(track, seg).start) if track.kind == "video" else \
            honest(track, seg)
        _encode(sink, 3)
        before = [s["index"] for s in sink.tracks["240p"]["segments"]]
        sink.discontinuity()
        _encode(sink, 3)                              # a second encoder: its indices start at 0 again
        meta = sink.meta()
        track = next(t for t in meta["tracks"] if t["name"] == "240p")
        indices = [s["index"] for s in track["segments"]]
        assert indices == list(range(len(indices))) and len(indices) > len(before) >= 2, indices
        assert starts == sorted(starts) and abs(starts[-1] - (len(starts) - 1)) < 0.1, starts   # timed on too
        text = live_playlist(meta, track)
        print(text)
        lines = text.splitlines()
        first_new = segment_name(len(before))
        at = lines.index(first_new)
        assert lines[at - 3:at - 1] == ["#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="init-1.mp4"'], lines[at - 3:at]
        assert '#EXT-X-MAP:URI="init.mp4"' in text and "EXT-X-DISCONTINUITY-SEQUENCE" not in text
        # the files as the gateway serves them, and ffprobe reads the window across the switch
        d = tmp_path / "window"
        d.mkdir()
        first_init = track.get("first_init")
        assert first_init and track["segments"][-1]["init"] == track["init"]
        (d / "init.mp4").write_bytes(b"".join(content.cat(store, first_init)))
        (d / "init-1.mp4").write_bytes(b"".join(content.cat(store, track["segments"][-1]["init"])))
        for s in track["segments"]:
            (d / segment_name(s["index"])).write_bytes(b"".join(content.cat(store, s["cid"])))
        (d / "index.m3u8").write_text(live_playlist({**meta, "ended": True}, track))   # ffprobe waits on a live one
        frames = ffprobe(str(d / "index.m3u8"), "-count_frames", "-select_streams", "v:0",
                         "-show_entries", "stream=nb_read_frames,width,height")["streams"][0]
        assert (frames["width"], frames["height"]) == (320, 240) and int(frames["nb_read_frames"]) >= 125, frames
        # once the window has slid past the switch, its first segment carries the discontinuity sequence
        meta["window"] = 2
        slid = live_playlist(meta, track)
        assert "#EXT-X-DISCONTINUITY-SEQUENCE:1" in slid and '#EXT-X-MAP:URI="init-1.mp4"' in slid
        assert "#EXT-X-DISCONTINUITY\n" not in slid
        assert re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", slid).group(1) == str(indices[-2])
        # a neighbour following the stream: the signed entry carries the epochs, and the playlist it renders from
        # the entry (edge/gateway/streams.py live_meta) is the publisher's, with each epoch's init under its name
        me = Identity.from_seed(b"d" * 32)
        meta["window"] = 8
        for window in (8, 2):
            row = {"name": "cam", "cid": meta["tracks"][0]["init"], "meta": {**meta, "window": window}}
            entry = parse_entry(serialize_entry(entry_of_row(row, me.node_id, 1), me))
            followed = live_meta(entry)
            theirs = next(t for t in followed["tracks"] if t["name"] == "240p")
            assert live_playlist(followed, theirs) == live_playlist({**meta, "window": window}, track), window
            cids = _live_cids(followed)
            assert cids["240p/init.mp4"] == first_init and cids["240p/init-1.mp4"] == track["init"]
            assert {first_init, track["init"]} <= {str(c) for t in entry.tracks for c in t.inits}


def test_the_live_speed_is_measured_once_and_kept(tmp_path):
    from edge.media import speed
    first = speed.live_speed(str(tmp_path), "240p", preset="ultrafast")
    print(f"this box cuts the 720p test pattern into 240p live at {first:.2f}x real time")
    assert first > 0 and speed.measured(str(tmp_path), speed.live_key("240p")) == round(first, 3)
    assert speed.measured(str(tmp_path), "240p") is None          # an import's figure is its own
    assert speed.live_speed(str(tmp_path), "240p") == round(first, 3)   # kept: not measured again


def test_the_recording_marks_the_switch_and_plays_across_it(tmp_path):
    with Store(str(tmp_path / "store")) as store:
        sink = live.LiveSink(store, "cam", 1.0, 8, store.scratch_dir("live-"))
        tracks, cut = {}, {}
        honest = sink.segment

        def segment(track, seg):   # what the publisher lists of each track: the segments as the sink numbered them
            seg = honest(track, seg)
            tracks.setdefault(track.name, track)
            cut.setdefault(track.name, []).append((seg.index, seg.start, seg.duration, len(seg.data)))
            return seg
        sink.segment = segment
        _encode(sink, 3)
        first = {name: len(c) for name, c in cut.items()}
        sink.discontinuity()
        _encode(sink, 3)
        for name, t in tracks.items():
            t.segments = cut[name]
        summary = live.finish(store, sink, [tracks["240p"], tracks["audio"]], None, True)
        root = tmp_path / "recording"
        content.get(store, summary["recording"], str(root))
        text = (root / "240p" / "index.m3u8").read_text()
        lines = text.splitlines()
        at = lines.index(segment_name(first["240p"]))
        assert lines[at - 2] == "#EXT-X-DISCONTINUITY" and text.count("#EXT-X-DISCONTINUITY") == 1, text
        frames = ffprobe(str(root / "240p" / "index.m3u8"), "-count_frames", "-select_streams", "v:0",
                         "-show_entries", "stream=nb_read_frames")["streams"][0]
        assert int(frames["nb_read_frames"]) >= 125, frames
        assert abs(store.name("cam")["meta"]["duration"] - 6.0) < 0.2   # timed on across the switch
