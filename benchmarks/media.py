"""The transcoding ladder against the ffmpeg CLI, and the agent's event-loop lag while it runs.

Both contenders make the same ladder from the same 1080p source: 720p/480p/360p H.264 (libx264, same
preset, bit rates, VBV, GOP and forced keyframes every segment) plus AAC, packaged as fragmented-MP4 HLS
segments on disk. Hearth decodes once and feeds a thread per rendition (edge.media.transcode); the ffmpeg
CLI uses split + scale in one filter graph. The two link different x264 builds (PyAV's wheel and Debian's
ffmpeg), which the output names. Goal: Hearth's fps >= 1.0x the CLI's.

Event-loop lag: the transcode runs in a worker thread from a Trio loop, as in `hearth run`, while a task
sleeps 10 ms at a time and records how late it wakes; goal p99 <= 20 ms.
Usage: media.py [--seconds N] [--repeat N]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import goal, print_table, report_checks  # noqa: E402

import av  # noqa: E402
import trio  # noqa: E402

from edge.media import transcode as tc  # noqa: E402
from edge.media.ladder import parse_ladder, plan  # noqa: E402
from edge.media.vod import DirectorySink  # noqa: E402

LADDER = "720p,480p,360p"
SEG = 4.0
PRESET = "veryfast"
FPS = 30


def make_source(path: str, seconds: int) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate={FPS}",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "6M", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", path], check=True)


def hearth(source: str, out: str):
    renditions = plan(parse_ladder(LADDER), 1920, 1080)
    os.makedirs(out)
    _, tracks = tc.transcode(source, renditions, DirectorySink(out),
                             tc.Options(seconds=SEG, preset=PRESET, encoder="libx264"))
    return tracks


def ffmpeg_cli(source: str, out: str) -> None:
    renditions = plan(parse_ladder(LADDER), 1920, 1080)
    os.makedirs(out)
    n = len(renditions)
    graph = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";" + ";".join(
        f"[s{i}]scale={r.width}:{r.height}:flags=bicubic[o{i}]" for i, r in enumerate(renditions))
    args = ["ffmpeg", "-v", "error", "-y", "-i", source, "-filter_complex", graph]
    gop = int(FPS * SEG)
    for i, r in enumerate(renditions):
        args += ["-map", f"[o{i}]", "-c:v", "libx264", "-preset", PRESET, "-b:v", f"{r.kbps}k",
                 "-maxrate", f"{r.maxrate_kbps}k", "-bufsize", f"{r.bufsize_kbits}k",
                 "-x264-params", f"keyint={gop * 4}:min-keyint={gop}:scenecut=0:open-gop=0:nal-hrd=none",
                 "-force_key_frames", f"expr:gte(t,n_forced*{SEG})",
                 "-f", "hls", "-hls_time", str(SEG), "-hls_segment_type", "fmp4", "-hls_playlist_type", "vod",
                 "-hls_fmp4_init_filename", f"v{i}_init.mp4", "-hls_segment_filename", f"{out}/v{i}_%05d.m4s",
                 f"{out}/v{i}.m3u8"]
    args += ["-map", "0:a", "-c:a", "aac", "-b:a", "128k", "-f", "hls", "-hls_time", str(SEG),
             "-hls_segment_type", "fmp4", "-hls_playlist_type", "vod", "-hls_fmp4_init_filename", "a_init.mp4",
             "-hls_segment_filename", f"{out}/a_%05d.m4s", f"{out}/a.m3u8"]
    subprocess.run(args, check=True)


def loop_lag(source: str, out: str) -> list[float]:
    lags = []

    async def main():
        done = trio.Event()

        async def sampler():
            while not done.is_set():
                t0 = trio.current_time()
                await trio.sleep(0.010)
                lags.append(max(0.0, trio.current_time() - t0 - 0.010))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            await trio.to_thread.run_sync(hearth, source, out)
            done.set()

    trio.run(main)
    return sorted(lags)


def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("ffmpeg"):
        sys.exit("the ffmpeg CLI is the reference: install Debian's ffmpeg (`make build` does)")
    work = tempfile.mkdtemp(prefix="hearth-bench-media-")
    try:
        source = os.path.join(work, "src1080.mp4")
        make_source(source, args.seconds)
        frames = args.seconds * FPS
        best = {"hearth": float("inf"), "ffmpeg": float("inf")}
        checks = []
        for r in range(args.repeat):
            for name, fn in (("hearth", hearth), ("ffmpeg", ffmpeg_cli)):
                out = os.path.join(work, f"{name}{r}")
                t0 = time.perf_counter()
                made = fn(source, out)
                best[name] = min(best[name], time.perf_counter() - t0)
                if made is not None and r == 0:
                    want = -(-args.seconds // int(SEG))
                    counts = {t.name: len(t.segments) for t in made}
                    checks.append((f"hearth made {want} segments in each of {sorted(counts)}: {counts}",
                                   len(counts) == 4 and all(abs(c - want) <= 1 for c in counts.values())))
                shutil.rmtree(out)
        ratio = best["ffmpeg"] / best["hearth"]
        ffv = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        print_table(f"ladder {LADDER} from {args.seconds} s of 1080p{FPS}, preset {PRESET}, {SEG:g} s segments "
                    f"(best of {args.repeat})", ["", "seconds", "fps", "ratio"],
                    [["hearth (PyAV " + av.__version__ + ")", best["hearth"], frames / best["hearth"], ratio],
                     ["ffmpeg CLI (" + ffv.split(" Copyright")[0] + ")", best["ffmpeg"], frames / best["ffmpeg"],
                      1.0]])
        print(f"  ladder fps ratio {ratio:.2f}x, {goal(ratio, 1.0)}")
        lags = loop_lag(source, os.path.join(work, "lag"))
        p99 = pct(lags, 0.99)
        print_table("event-loop lag while transcoding (10 ms sleeps in the Trio loop)", ["", "ms"],
                    [["p50", pct(lags, 0.5)], ["p99", p99], ["max", lags[-1] * 1000 if lags else 0.0],
                     ["samples", len(lags)]])
        print(f"  p99 {p99:.1f} ms, goal <= 20 ms: {'met' if p99 <= 20 else 'MISSED'}")
        print("\n  live segment latency and WebRTC data-channel throughput: not built yet (issue 5 remains open)")
        report_checks(checks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
