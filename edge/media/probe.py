"""What a media file holds: container, duration, the video and audio streams a ladder is made from."""

import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction

from edge.media.errors import MediaError


@dataclass(frozen=True)
class VideoInfo:
    index: int
    codec: str
    width: int           # as displayed (after rotation)
    height: int
    fps: float           # average frame rate; 0 if the file does not say
    rotation: int        # degrees the decoder's frames must be turned to display upright
    pix_fmt: str
    bit_rate: int


@dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str
    bit_rate: int


@dataclass(frozen=True)
class MediaInfo:
    path: str
    container: str
    duration: float      # seconds; 0 if unknown (a live source)
    size: int
    bit_rate: int
    video: VideoInfo | None
    audio: AudioInfo | None

    def as_dict(self) -> dict:
        return asdict(self)


def open_input(source: str, options: dict | None = None, fmt: str | None = None, timeout: float | None = None):
    """av.open for reading, with FFmpeg's complaint turned into a message that names the file."""
    import av   # here, not at the top: see edge/media/transcode.py
    try:
        kwargs = {"options": options or {}, "format": fmt}
        if timeout is not None:
            kwargs["timeout"] = timeout
        return av.open(source, "r", **kwargs)
    except FileNotFoundError:
        raise MediaError(f"{source}: no such file") from None
    except av.error.InvalidDataError:
        raise MediaError(f"{source} is not a media file FFmpeg can read (its data is invalid or truncated)") from None
    except av.FFmpegError as exc:
        if "://" in source and "protocol not found" in str(exc.strerror or exc).lower():
            scheme = source.split("://", 1)[0]
            raise MediaError(f"{source}: this FFmpeg build cannot open {scheme}:// sources (PyAV's wheel has no "
                             "SRT, for one); push RTMP instead, or use a PyAV built with it") from None
        raise MediaError(f"{source} cannot be opened: {exc.strerror or exc}") from None


def first_frame_rotation(container, stream) -> int:
    """Degrees (0, 90, 180, 270) the video must turn clockwise to stand upright, from the display matrix
    FFmpeg attaches to decoded frames (phones record portrait video as rotated landscape)."""
    import av
    try:
        for frame in container.decode(stream):
            return int(round(-frame.rotation)) % 360
    except av.FFmpegError:
        return 0
    return 0


def _decodable(streams, source: str, what: str):
    """The streams FFmpeg can decode; MediaError naming the codec if there are some and none is."""
    ok = [s for s in streams if s.codec_context is not None]
    if streams and not ok:
        codec = getattr(streams[0], "codec_tag", "") or "an unknown codec"
        raise MediaError(f"{source}: its {what} uses {codec}, which this FFmpeg build cannot decode; "
                         "convert it to H.264/AAC (or another common codec) first")
    return ok


# FFmpeg renders text files (ANSI art) as video through these demuxers; nobody means to stream a README.
TEXT_DEMUXERS = {"tty", "bin", "adf", "idf", "xbin"}


def describe(container, source: str) -> MediaInfo:
    import av
    video = audio = None
    if container.format.name in TEXT_DEMUXERS:
        raise MediaError(f"{source} is not a media file FFmpeg can read as audio or video (it looks like text)")
    vstreams = _decodable([s for s in container.streams.video
                           if not (s.disposition & av.stream.Disposition.attached_pic)], source, "video")
    astreams = _decodable(list(container.streams.audio), source, "audio")
    if vstreams:
        s = vstreams[0]
        cc = s.codec_context
        rate = s.average_rate or s.guessed_rate or Fraction(0)
        rot = first_frame_rotation(container, s)
        if not (cc.width and cc.height):
            # No picture decoded and none declared: FFmpeg's raw-stream demuxers (h263, m4v) find a "stream"
            # in about one random file in sixty, and an import of it could only fail later, less clearly.
            raise MediaError(f"{source} is not a media file FFmpeg can read (its {cc.name} video has no picture "
                             "it can decode)")
        w, h = (cc.height, cc.width) if rot in (90, 270) else (cc.width, cc.height)
        video = VideoInfo(s.index, cc.name, w, h, float(rate), rot, cc.format.name if cc.format else "",
                          cc.bit_rate or 0)
    if astreams:
        s = astreams[0]
        cc = s.codec_context
        audio = AudioInfo(s.index, cc.name, cc.sample_rate, cc.channels if hasattr(cc, "channels") else
                          cc.layout.nb_channels, cc.layout.name if cc.layout else "", cc.bit_rate or 0)
    duration = container.duration / av.time_base if container.duration else 0.0
    if math.isnan(duration) or duration < 0:
        duration = 0.0
    size = os.path.getsize(source) if os.path.isfile(source) else 0
    return MediaInfo(source, container.format.name, duration, size, container.bit_rate or 0, video, audio)


def probe(source: str) -> MediaInfo:
    """Describe source; MediaError if FFmpeg cannot read it or it holds neither video nor audio."""
    with open_input(source) as container:
        info = describe(container, source)
    if info.video is None and info.audio is None:
        raise MediaError(f"{source} holds no video or audio stream FFmpeg can decode")
    return info
