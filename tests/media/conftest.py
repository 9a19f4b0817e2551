"""Media inputs made once per session with Debian's ffmpeg CLI (lavfi test sources), plus ffprobe helpers."""

import json
import os
import random
import shutil
import subprocess
from fractions import Fraction

import av
import pytest

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")


def ffmpeg(*args):
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True)


def ffprobe(path, *args) -> dict:
    out = subprocess.run([FFPROBE, "-v", "error", "-of", "json", *args, path], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def _rotated(path, degrees):
    """A 320x240 picture stored with a display matrix saying: show it turned (how phones record portrait)."""
    out = av.open(path, "w")
    s = out.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
    s.set_display_rotation(degrees)
    for i in range(50):
        f = av.VideoFrame(320, 240, "yuv420p")
        for p in f.planes:
            p.update(bytes([i * 5 % 255]) * p.buffer_size)
        f.pts = i
        f.time_base = Fraction(1, 25)
        for pk in s.encode(f):
            out.mux(pk)
    for pk in s.encode(None):
        out.mux(pk)
    out.close()


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    if not (FFMPEG and FFPROBE):
        pytest.fail("ffmpeg and ffprobe are needed (Debian's ffmpeg package; `make test` installs it)")
    d = tmp_path_factory.mktemp("media")
    src = lambda w, h, r=25: ["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={r}"]   # noqa: E731
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    files = {}
    files["av"] = str(d / "av.mp4")          # 640x360, 25 fps, AAC 44.1 kHz mono, 5 s
    ffmpeg(*src(640, 360), *tone, "-t", "5", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-shortest", files["av"])
    files["noaudio"] = str(d / "noaudio.mp4")
    ffmpeg(*src(640, 360), "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", files["noaudio"])
    files["audio"] = str(d / "audio.m4a")
    ffmpeg(*tone, "-t", "5", "-c:a", "aac", files["audio"])
    files["four3"] = str(d / "four3.mp4")
    ffmpeg(*src(640, 480), "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", files["four3"])
    files["vfr"] = str(d / "vfr.mkv")        # frame times jitter around 25 fps: variable frame rate
    ffmpeg(*src(480, 270), "-t", "4", "-vf", "setpts='(N/25+0.012*sin(N))/TB'", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-preset", "ultrafast", files["vfr"])
    files["portrait"] = str(d / "portrait.mp4")
    _rotated(files["portrait"], 90)
    with open(files["av"], "rb") as f:
        whole = f.read()
    files["truncated"] = str(d / "truncated.mp4")
    with open(files["truncated"], "wb") as f:
        f.write(whole[: len(whole) // 3])
    files["garbage"] = str(d / "garbage.mp4")
    with open(files["garbage"], "wb") as f:
        # Fixed bytes: about one random file in sixty reads as a raw H.263 stream, some with a picture in it.
        f.write(random.Random(20261206).randbytes(200_000))
    mkv = str(d / "h264.mkv")
    ffmpeg(*src(320, 240), "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", mkv)
    with open(mkv, "rb") as f:
        data = f.read()
    assert b"V_MPEG4/ISO/AVC" in data
    files["unknown_codec"] = str(d / "unknown.mkv")   # a codec id no FFmpeg decoder knows
    with open(files["unknown_codec"], "wb") as f:
        f.write(data.replace(b"V_MPEG4/ISO/AVC", b"V_NOTACODEC/XYZ"))
    files["text"] = str(d / "notes.txt")
    with open(files["text"], "w") as f:
        f.write("not media\n" * 100)
    return files
