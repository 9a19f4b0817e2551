"""HLS with CMAF segments: cutting a fragmented-MP4 byte stream into segments, and writing playlists.

`Segmenter` is the file object FFmpeg's mp4 muxer writes into (movflags frag_keyframe+empty_moov+
default_base_moof): it keeps only the fragment being written, hands over the init segment once and each
segment as soon as the next one begins, so memory stays at one segment per rendition. Playlists are pure
functions of the segment list.
"""

import math
from dataclasses import dataclass, field

from edge.errors import DecodeError
from edge.media import bmff

PREFIX_BOXES = {b"styp", b"sidx", b"prft", b"emsg", b"free", b"skip"}
HLS_VERSION = 7


@dataclass(frozen=True)
class Segment:
    index: int
    start: float       # seconds from the start of the stream
    duration: float
    data: bytes = field(repr=False)
    independent: bool = True   # starts with a sync sample (keyframe)


class Segmenter:
    """A write-only file: fMP4 bytes in; `on_init(bytes, Track)` once, then `on_segment(Segment)` per segment.

    A new segment begins at the first fragment whose decode time reaches the next boundary (multiples of
    `seconds` from the track's first decode time) and, for video, starts with a keyframe.
    """

    def __init__(self, seconds: float, on_init, on_segment, first_index: int = 0):
        if seconds <= 0:
            raise ValueError("segment duration must be positive")
        self.seconds = seconds
        self.on_init = on_init
        self.on_segment = on_segment
        self.track: bmff.Track | None = None
        self._buf = bytearray()
        self._init_parts: list[bytes] = []
        self._prefix = bytearray()
        self._moof: bytes | None = None
        self._frag: bmff.Fragment | None = None
        self._parts: list[bytes] = []
        self._seg_start: int | None = None       # decode time of the open segment
        self._seg_end = 0
        self._seg_sync = True
        self._origin: int | None = None
        self._index = self._first_index = first_index
        self.closed = False
        self.bytes_in = 0
        self.shift_seconds = 0.0       # added to every fragment's decode time (to line tracks up)

    # the file-object side ----------------------------------------------------------------------------------

    def write(self, data) -> int:
        n = len(data)
        self.bytes_in += n
        self._buf += data
        self._drain()
        return n

    def flush(self):
        pass

    def _drain(self):
        offset = 0
        while True:
            box = bmff.box_at(self._buf, offset)
            if box is None:
                break
            self._box(box.type, bytes(self._buf[box.start:box.end]))
            offset = box.end
        if offset:
            del self._buf[:offset]

    def _box(self, kind: bytes, data: bytes):
        if self.track is None:
            if kind in (b"ftyp", b"free"):
                self._init_parts.append(data)
                return
            if kind != b"moov":
                raise DecodeError(f"the muxer wrote a {kind!r} box before the moov box")
            init = b"".join(self._init_parts) + data
            self.track = bmff.parse_init(init)
            self._init_parts = []
            self.on_init(init, self.track)
            return
        if kind in PREFIX_BOXES:
            self._prefix += data
        elif kind == b"moof":
            if self.shift_seconds:
                data = bmff.shift_decode_time(data, int(round(self.shift_seconds * self.track.timescale)))
            self._moof = data
            self._frag = bmff.parse_moof(data, 8, len(data), self.track.default_duration)
        elif kind == b"mdat":
            if self._moof is None:
                raise DecodeError("an mdat box without the moof box that describes it")
            self._fragment(bytes(self._prefix) + self._moof + data, self._frag)
            self._prefix = bytearray()
            self._moof = self._frag = None
        # mfra, and anything else after the fragments, carries nothing a segment needs

    def _fragment(self, data: bytes, frag: bmff.Fragment):
        ts = self.track.timescale
        if self._origin is None:
            self._origin = frag.decode_time
        if self._seg_start is not None:
            boundary = self._origin + (self._index + 1 - self._first_index) * self.seconds * ts
            video = self.track.handler == "vide"
            # half a sample of slack: a keyframe forced at t >= boundary may land a rounding error early
            if frag.decode_time >= boundary - ts * 0.001 and (frag.starts_with_sync or not video):
                self._emit()
        if self._seg_start is None:
            self._seg_start = frag.decode_time
            self._seg_sync = frag.starts_with_sync
        self._parts.append(data)
        self._seg_end = frag.decode_time + frag.duration

    def _emit(self):
        ts = self.track.timescale
        start = (self._seg_start - self._origin) / ts
        seg = Segment(self._index, start, (self._seg_end - self._seg_start) / ts, b"".join(self._parts),
                      self._seg_sync)
        self._parts = []
        self._seg_start = None
        self._index += 1
        self.on_segment(seg)

    def close(self):
        """The muxer is done: hand over the last segment."""
        if self.closed:
            return
        self.closed = True
        if self._buf.strip(b"\0"):
            box = bmff.box_at(self._buf, 0)
            if box is None:
                raise DecodeError(f"the muxer stopped in the middle of a box ({len(self._buf)} bytes left)")
        if self._parts:
            self._emit()


# playlists ------------------------------------------------------------------------------------------------

def _fmt(seconds: float) -> str:
    return f"{seconds:.6f}".rstrip("0").rstrip(".") if seconds else "0"


def media_playlist(segments: list[tuple[str, float]], *, init_uri: str, target: float, ended: bool,
                   media_sequence: int = 0, vod: bool = False, discontinuity_sequence: int = 0,
                   breaks: dict[int, str | None] | None = None) -> str:
    """A media playlist for (uri, duration) segments. target: the configured segment duration, raised to
    cover the longest segment (EXT-X-TARGETDURATION must be >= every EXTINF rounded). breaks: position in
    segments -> the init URI from there on (None: the same): EXT-X-DISCONTINUITY (and EXT-X-MAP) before it."""
    longest = max([d for _, d in segments], default=target)
    target_duration = max(1, math.ceil(max(target, longest) - 1e-6), round(longest))
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", f"#EXT-X-TARGETDURATION:{target_duration}",
             f"#EXT-X-MEDIA-SEQUENCE:{media_sequence}"]
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    if vod:
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
    lines += ["#EXT-X-INDEPENDENT-SEGMENTS", f'#EXT-X-MAP:URI="{init_uri}"']
    for i, (uri, duration) in enumerate(segments):
        if breaks and i in breaks:
            lines.append("#EXT-X-DISCONTINUITY")
            if breaks[i]:
                lines.append(f'#EXT-X-MAP:URI="{breaks[i]}"')
        lines += [f"#EXTINF:{duration:.6f},", uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Variant:
    uri: str
    bandwidth: int          # peak bits/s of one segment, audio included
    average_bandwidth: int
    codecs: str
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0


@dataclass(frozen=True)
class AudioGroup:
    uri: str
    group: str = "audio"
    name: str = "audio"


def master_playlist(variants: list[Variant], audio: AudioGroup | None = None) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio:
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{audio.group}",NAME="{audio.name}",DEFAULT=YES,'
                     f'AUTOSELECT=YES,URI="{audio.uri}"')
    for v in variants:
        attrs = [f"BANDWIDTH={v.bandwidth}", f"AVERAGE-BANDWIDTH={v.average_bandwidth}", f'CODECS="{v.codecs}"']
        if v.width and v.height:
            attrs.append(f"RESOLUTION={v.width}x{v.height}")
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        if audio and v.width:
            attrs.append(f'AUDIO="{audio.group}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"


def bandwidths(segments: list[tuple[int, float]]) -> tuple[int, int]:
    """(peak, average) bits/s over (bytes, seconds) segments; a segment shorter than half a second does not
    set the peak (a short last segment would exaggerate it)."""
    total_bytes = sum(b for b, _ in segments)
    total_secs = sum(d for _, d in segments)
    average = int(total_bytes * 8 / total_secs) if total_secs > 0 else 0
    peaks = [b * 8 / d for b, d in segments if d >= 0.5] or [average]
    return int(max(peaks)), average


# what the transcoder produced, and the playlists made of it: no media library needed to read or serve them

MASTER = "master.m3u8"
INDEX = "index.m3u8"
INIT = "init.mp4"


@dataclass
class Track:
    """What one rendition produced, as the packager needs it for playlists."""

    name: str
    kind: str                       # 'video' or 'audio'
    codec: str = ""
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0
    kbps: int = 0
    segments: list[tuple[int, float, float, int]] = field(default_factory=list)   # index, start, dur, bytes


def segment_name(index: int) -> str:
    return f"{index:05d}.m4s"


def track_playlist(track: Track, seconds: float, *, ended: bool = True, vod: bool = True,
                   window: int | None = None) -> str:
    segs = track.segments[-window:] if window else track.segments
    first = segs[0][0] if segs else 0
    return media_playlist([(segment_name(i), d) for i, _, d, _ in segs], init_uri=INIT, target=seconds,
                          ended=ended, media_sequence=first, vod=vod)


def variants(tracks: list[Track]) -> tuple[list[Variant], AudioGroup | None]:
    audio = next((t for t in tracks if t.kind == "audio"), None)
    video = [t for t in tracks if t.kind == "video"]
    audio_peak = audio_avg = 0
    if audio and audio.segments:
        audio_peak, audio_avg = bandwidths([(b, d) for _, _, d, b in audio.segments])
    out = []
    for t in video:
        peak, avg = bandwidths([(b, d) for _, _, d, b in t.segments]) if t.segments else (t.kbps * 1000,) * 2
        codecs = t.codec + (f",{audio.codec}" if audio else "")
        out.append(Variant(f"{t.name}/{INDEX}", peak + audio_peak, avg + audio_avg, codecs, t.width, t.height,
                           t.frame_rate))
    if not video and audio:            # audio only: the audio playlist is the one variant
        return [Variant(f"{audio.name}/{INDEX}", audio_peak, audio_avg, audio.codec)], None
    return out, (AudioGroup(f"{audio.name}/{INDEX}") if audio else None)
