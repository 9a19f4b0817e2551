"""H.264 encoders this box can use: hardware ones found by trying them, libx264 otherwise.

A hardware encoder being compiled into FFmpeg says nothing about the box (PyAV's wheel carries nvenc and
qsv everywhere), so each candidate is opened and made to encode a few frames; the first that works wins.
"""

import logging
from dataclasses import dataclass
from fractions import Fraction

log = logging.getLogger(__name__)

# (encoder, kind, pixel format it takes from software frames, options)
CANDIDATES = [
    ("h264_nvenc", "NVIDIA NVENC", "yuv420p", {"preset": "p4", "tune": "ll"}),
    ("h264_v4l2m2m", "V4L2 mem2mem (Raspberry Pi 4, other SoCs)", "yuv420p", {}),
    ("h264_qsv", "Intel Quick Sync", "nv12", {"preset": "veryfast"}),
    ("h264_vaapi", "VA-API (Intel, AMD)", "nv12", {}),
    ("libx264", "software (x264)", "yuv420p", {}),
]
SOFTWARE = "libx264"


@dataclass(frozen=True)
class EncoderStatus:
    name: str
    kind: str
    usable: bool
    reason: str
    pix_fmt: str
    hardware: bool


def _try(name: str, pix_fmt: str, options: dict) -> str:
    """'' if name encodes frames here, else why not."""
    import av   # here, not at the top: see edge/media/transcode.py
    try:
        codec = av.codec.Codec(name, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return "not in this FFmpeg build"
    try:
        ctx = av.codec.CodecContext.create(codec)
        ctx.width, ctx.height = 256, 144
        ctx.pix_fmt = pix_fmt
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25)
        ctx.bit_rate = 300_000
        ctx.options = dict(options)
        ctx.open()
        packets = 0
        for i in range(3):
            frame = av.VideoFrame(256, 144, pix_fmt)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.pts = i
            packets += len(ctx.encode(frame))
        packets += len(ctx.encode(None))
        if not packets:
            return "opened but produced no output"
        return ""
    except av.FFmpegError as exc:
        return f"no device ({exc.strerror or exc})"
    except Exception as exc:       # noqa: BLE001 - a broken driver can fail in any way; report it, don't crash
        return f"failed: {exc}"


_cache: list[EncoderStatus] | None = None


def detect(refresh: bool = False) -> list[EncoderStatus]:
    """Every candidate with whether it works here and why not; tried once per process."""
    global _cache
    if _cache is None or refresh:
        found = []
        for name, kind, pix_fmt, options in CANDIDATES:
            reason = _try(name, pix_fmt, options)
            found.append(EncoderStatus(name, kind, not reason, reason or "ok", pix_fmt, name != SOFTWARE))
            log.debug("encoder %s: %s", name, reason or "usable")
        _cache = found
    return _cache


def choose(preference: str = "auto") -> EncoderStatus:
    """The encoder to use: `auto` takes the first usable hardware one, else libx264; a name forces it."""
    statuses = detect()
    if preference not in ("auto", ""):
        for s in statuses:
            if s.name == preference:
                if not s.usable:
                    from edge.media.errors import MediaError
                    raise MediaError(f"the encoder {preference} cannot be used here: {s.reason}; "
                                     "`hearth media encoders` lists what this box can do")
                return s
        from edge.media.errors import MediaError
        raise MediaError(f"unknown encoder {preference!r}; choose auto or one of "
                         + ", ".join(s.name for s in statuses))
    for s in statuses:
        if s.usable:
            return s
    from edge.media.errors import MediaError
    raise MediaError("no H.264 encoder works in this FFmpeg build, not even libx264")


def options_for(status: EncoderStatus, kbps: int, maxrate_kbps: int, bufsize_kbits: int, fps: float,
                seg_seconds: float, live: bool, preset: str) -> dict:
    """Encoder options for one rendition: rate control, closed GOPs with keyframes only where forced."""
    gop = max(1, int(round((fps or 30) * seg_seconds)))
    if status.name == SOFTWARE:
        params = [f"keyint={gop * 4}", f"min-keyint={gop}", "scenecut=0", "open-gop=0",
                  f"vbv-maxrate={maxrate_kbps}", f"vbv-bufsize={bufsize_kbits}", "nal-hrd=none"]
        opts = {"preset": preset, "x264-params": ":".join(params), "forced-idr": "1"}
        if live:
            opts["tune"] = "zerolatency"
        return opts
    opts = dict(next(o for n, _, _, o in CANDIDATES if n == status.name))
    opts.update({"maxrate": str(maxrate_kbps * 1000), "bufsize": str(bufsize_kbits * 1000), "g": str(gop),
                 "forced-idr": "1"})
    return opts
