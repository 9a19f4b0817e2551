"""`hearth doctor`: what this box runs Hearth with, and what is wrong with it."""

import platform
import sys
from importlib import metadata

import edge
from edge import kernels

LIBRARIES = ("click", "rich", "av", "Cython", "pyzmq", "pynacl", "trio", "zeroconf", "aiortc")
HARDWARE_MARKERS = ("nvenc", "qsv", "vaapi", "v4l2m2m", "amf", "videotoolbox", "rkmpp")


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def ffmpeg_encoders() -> dict:
    """Encoders the FFmpeg inside PyAV offers, by kind, with the hardware ones listed apart."""
    try:
        import av
        from av.codec import Codec
    except ImportError as exc:
        return {"error": f"PyAV is not installed ({exc}); transcoding is unavailable"}
    kinds: dict = {"video": [], "audio": [], "hardware": []}
    for name in sorted(av.codecs_available):
        try:
            codec = Codec(name, "w")
        except Exception:  # a decoder-only name raises; only encoders matter here
            continue
        if any(marker in name for marker in HARDWARE_MARKERS):
            kinds["hardware"].append(name)
        elif codec.type in ("video", "audio"):
            kinds[codec.type].append(name)
    kinds["ffmpeg"] = {lib: ".".join(map(str, v)) for lib, v in av.library_versions.items()}
    return kinds


def collect() -> dict:
    kernel_rows = kernels.report()
    problems = [f"{r['kernel']}: {r['error']}" for r in kernel_rows if r["error"]]
    return {
        "hearth": edge.__version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "libraries": library_versions(),
        "kernels": kernel_rows,
        "encoders": ffmpeg_encoders(),
        "problems": problems,
    }


def render(report: dict) -> str:
    lines = [f"hearth {report['hearth']} on Python {report['python']}, {report['platform']}", "", "libraries:"]
    for name, version in report["libraries"].items():
        lines.append(f"  {name:10} {version or 'not installed'}")
    lines += ["", "native kernels:"]
    for row in report["kernels"]:
        state = "native" if row["native"] else "MISSING"
        lines.append(f"  {row['kernel']:10} {state:8} {row['detail']}")
        if row["error"]:
            lines.append(f"  {'':10} !! {row['error']}")
    enc = report["encoders"]
    lines += ["", "FFmpeg encoders (PyAV):"]
    if "error" in enc:
        lines.append(f"  {enc['error']}")
    else:
        lines.append("  libraries: " + ", ".join(f"{k} {v}" for k, v in enc["ffmpeg"].items()))
        for kind in ("video", "audio", "hardware"):
            lines.append(f"  {kind} ({len(enc[kind])}): " + " ".join(enc[kind]))
        lines.append("  (hardware encoders are compiled in; whether this box has the device is checked by the media service)")
    if report["problems"]:
        lines += ["", "problems:"] + [f"  {p}" for p in report["problems"]]
    return "\n".join(lines)
