"""`hearth media import`: a file becomes an HLS stream stored as one UnixFS directory, pinned and named.

The stream's directory is plain IPFS content, so its CID plays from this node's gateway, from any node that
fetched it, and from any IPFS gateway (playlists use relative URIs):

    master.m3u8                      every rung, with CODECS, BANDWIDTH, RESOLUTION, FRAME-RATE
    stream.json                      what was made from what (source, ladder, segment list)
    720p/index.m3u8  720p/init.mp4  720p/00000.m4s …
    audio/index.m3u8 audio/init.mp4 audio/00000.m4s …
"""

import json
import os
import re
import shutil
import time
from dataclasses import dataclass

from edge.media import transcode as tc
from edge.media.errors import MediaError
from edge.media.ladder import AUDIO_KBPS, Rendition, parse_ladder, plan
from edge.media.package import (INDEX, INIT, MASTER, master_playlist, segment_name,  # noqa: F401 (re-exported)
                                 track_playlist, variants)
from edge.media.probe import probe
from edge.store import content
from edge.ipld.cid import CID
from edge.store.repo import Store

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise MediaError(f"{name!r} is not a stream name; use 1-64 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    return name


class DirectorySink(tc.Sink):
    """Writes each track's init segment and segments as files under root/<track>/."""

    def __init__(self, root: str):
        self.root = root

    def _dir(self, track) -> str:
        path = os.path.join(self.root, track.name)
        os.makedirs(path, exist_ok=True)
        return path

    def init(self, track, data):
        with open(os.path.join(self._dir(track), INIT), "wb") as f:
            f.write(data)

    def segment(self, track, seg):
        with open(os.path.join(self._dir(track), segment_name(seg.index)), "wb") as f:
            f.write(seg.data)


def write_playlists(root: str, tracks: list[tc.Track], seconds: float) -> None:
    for t in tracks:
        with open(os.path.join(root, t.name, INDEX), "w") as f:
            f.write(track_playlist(t, seconds))
    vs, audio = variants(tracks)
    with open(os.path.join(root, MASTER), "w") as f:
        f.write(master_playlist(vs, audio))


@dataclass
class Imported:
    name: str
    cid: CID
    duration: float
    renditions: list[dict]
    encoder: str
    seconds: float
    elapsed: float

    def as_dict(self) -> dict:
        return {"name": self.name, "cid": str(self.cid), "duration": round(self.duration, 3),
                "renditions": self.renditions, "encoder": self.encoder, "segment_seconds": self.seconds,
                "elapsed": round(self.elapsed, 3)}


def estimate_bytes(renditions: list[Rendition], duration: float, audio: bool) -> int:
    kbps = sum(r.maxrate_kbps for r in renditions) + (AUDIO_KBPS if audio else 0)
    return int(kbps * 1000 / 8 * duration)


def import_file(store: Store, source: str, *, name: str | None = None, ladder: str = "1080p,720p,480p,360p",
                opts: tc.Options | None = None, progress=None, cancel=None, pin_as: str | None = None) -> Imported:
    """Transcode source into the ladder, store the stream directory, pin it under name (default: the file
    name without extension). Nothing is stored if transcoding fails. pin_as: pin the directory under that pin
    name instead, naming no stream here (a transcode done for a neighbour, kept until it has fetched it)."""
    opts = opts or tc.Options()
    if not 1 <= opts.seconds <= 30:
        raise MediaError(f"a segment duration of {opts.seconds} s is outside 1..30 s")
    name = check_name(name or re.sub(r"[^A-Za-z0-9._-]", "-", os.path.splitext(os.path.basename(source))[0])
                      .lstrip("._-") or "stream")
    rungs = parse_ladder(ladder)
    info = probe(source)
    renditions = plan(rungs, info.video.width, info.video.height) if info.video else []
    store.check_room(estimate_bytes(renditions, info.duration, info.audio is not None), source)
    started = time.monotonic()
    staging = store.scratch_dir("media-")
    try:
        info, tracks = tc.transcode(source, renditions, DirectorySink(staging), opts, progress=progress,
                                    cancel=cancel)
        if not any(t.segments for t in tracks):
            raise MediaError(f"{source}: nothing could be transcoded (no frames or samples decoded)")
        write_playlists(staging, tracks, opts.seconds)
        encoder = tc.encoders.choose(opts.encoder).name
        manifest = {
            "name": name, "kind": "vod", "created": time.time(), "source": info.as_dict(),
            "segment_seconds": opts.seconds, "encoder": encoder,
            "tracks": [{"name": t.name, "kind": t.kind, "codec": t.codec, "width": t.width, "height": t.height,
                        "frame_rate": t.frame_rate, "kbps": t.kbps,
                        "segments": [{"index": i, "start": round(s, 6), "duration": round(d, 6), "bytes": b}
                                     for i, s, d, b in t.segments]} for t in tracks],
        }
        # the source's file name or path is not published: stream.json is read by anyone the stream reaches
        del manifest["source"]["path"]
        with open(os.path.join(staging, "stream.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        result = content.add(store, staging, pin=False)
        duration = max((s + d for t in tracks for _, s, d, _ in t.segments[-1:]), default=0.0)
        summary = [{"name": t.name, "kind": t.kind, "codec": t.codec, "width": t.width, "height": t.height,
                    "kbps": t.kbps, "segments": len(t.segments)} for t in tracks]
        if pin_as:
            store.pin(result.cid, name=pin_as)
        else:
            store.set_name(name, result.cid, "stream", {"kind": "vod", "duration": duration, "tracks": summary})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Imported(name, result.cid, duration, summary, encoder, opts.seconds, time.monotonic() - started)


def stream_meta(manifest: dict) -> dict:
    """The name's meta (as import_file sets it) from a stream.json: for a stream transcoded elsewhere."""
    tracks = manifest.get("tracks", [])
    duration = max((s["start"] + s["duration"] for t in tracks for s in t.get("segments", [])[-1:]), default=0.0)
    summary = [{"name": t["name"], "kind": t["kind"], "codec": t.get("codec", ""), "width": t.get("width", 0),
                "height": t.get("height", 0), "kbps": t.get("kbps", 0), "segments": len(t.get("segments", []))}
               for t in tracks]
    return {"kind": "vod", "duration": duration, "tracks": summary}
