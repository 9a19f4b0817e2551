"""Transcoding on a neighbour against transcoding here: `hearth media import --on NODE` against `--on local`.

Two agents on loopback (mDNS off, each the other's static peer): A asks, B transcodes for anyone. Both imports
make the same ladder from the same 1080p source; the offloaded one also moves the source to B, the stream back
to A (every block checked against its CID), and spot-checks the output on A. Wall time of the command, each.
Goal: offloaded <= 1.2x local. Also the spot check's CPU as a share of the local transcode's CPU (the import
process's own CPU time, its encoder threads included).
Usage: offload.py [--seconds N] [--ladder L] [--preset P]
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import print_table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hearth(data_dir: str, *args, env=None, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edge", "--data-dir", data_dir, *args], capture_output=True,
                       text=True, env=env)
    if check and r.returncode:
        sys.exit(f"hearth {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def timed_import(data_dir: str, env: dict, *args) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the command's process, its JSON result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = hearth(data_dir, "media", "import", *args, "--json", env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--ladder", default="1080p,720p,480p,360p")
    ap.add_argument("--preset", default="veryfast")
    args = ap.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        sys.exit("ffmpeg is needed to make the source (Debian's ffmpeg package)")
    work = tempfile.mkdtemp(prefix="hearth-offload-")
    procs = []
    try:
        source = os.path.join(work, "source.mp4")
        subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-f", "lavfi",
                        "-i", "sine=frequency=440", "-t", str(args.seconds), "-c:v", "libx264", "-preset", "ultrafast",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", source], check=True)
        dirs = [os.path.join(work, n) for n in ("a", "b")]
        ports = [free_port(), free_port()]
        ids = []
        for d in dirs:
            hearth(d, "init")
            from edge.identity import KEY_FILE, Identity
            ids.append(Identity.load(os.path.join(d, KEY_FILE)).node_id)
        envs = []
        for i, d in enumerate(dirs):
            other = 1 - i
            env = {**os.environ, "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": str(ports[i]),
                   "HEARTH_GATEWAY_PORT": "0", "HEARTH_METRICS_PORT": "0", "HEARTH_MDNS": "false",
                   "HEARTH_STATIC_PEERS": f"{ids[other]}@127.0.0.1:{ports[other]}",
                   "HEARTH_TRANSCODE_FOR": "any" if i == 1 else "none"}
            envs.append(env)
            procs.append(subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", d, "run"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = hearth(dirs[0], "peers", "--json", env=envs[0], check=False)
            if r.returncode == 0 and any(p["rtt_ms"] is not None for p in json.loads(r.stdout)):
                break
            time.sleep(0.5)
        else:
            sys.exit("the two agents did not meet within 30 s")
        common = ["--ladder", args.ladder, "--preset", args.preset, "--segment-seconds", "4"]
        local_wall, local_cpu, _ = timed_import(dirs[0], envs[0], source, "--on", "local", "--name", "here",
                                                *common)
        off_wall, off_cpu, result = timed_import(dirs[0], envs[0], source, "--on", ids[1], "--name", "there",
                                                 *common)
        check = result["spot_check"]
        ratio = off_wall / local_wall
        print_table(f"ladder {args.ladder} from {args.seconds} s of 1080p30, preset {args.preset}, on loopback",
                    ["import", "wall s", "CPU s here", "x real time"],
                    [["local", local_wall, local_cpu, args.seconds / local_wall],
                     ["on the neighbour", off_wall, off_cpu, args.seconds / off_wall]])
        print(f"\noffloaded / local wall time: {ratio:.2f}x (goal <= 1.20x: {'met' if ratio <= 1.2 else 'MISSED'})")
        job = json.loads(hearth(dirs[0], "jobs", "--json", env=envs[0]).stdout)["on"][-1]
        print(f"the job on B: {job['speed']:.2f}x real time there, {job['elapsed']:.1f} s from its start to its "
              f"output checked here")
        print(f"spot check: {check['checked']} of {check['of']} video segments, lowest {check['min_db']} dB, "
              f"{check['cpu_s']:.2f} s CPU = {check['cpu_s'] / local_cpu:.1%} of the local transcode's CPU")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
