"""Memory (issue 19): the agent and a 1080p import of the four-rung ladder together stay within a 512 MiB memory
cgroup (cgroup v1: memory.limit_in_bytes) without being killed, the import sized to the budget it reads from its
cgroup (edge/governor/memory.py), and its output passes the ffprobe checks of tests/media/test_vod.py. Printed:
each process's peak RSS and the cgroup's peak. The issue measured a 20 s source (457 MB peak before the
budget); this test imports SOURCE_SECONDS of 1080p30 to keep its time down (the peak is reached within the
first seconds: it is the encoders' frames in flight, not the file's length)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from edge.governor.memory import plan_transcode
from edge.store import Store, content
from tests.agent.netns import Node
from tests.media.conftest import ffmpeg, ffprobe
from tests.media.test_vod import check_video_rendition
from tests.security.test_memory_under_attack import CGROUP_ROOT, why_no_cgroup

LIMIT = 512 << 20
SOURCE_SECONDS = 8
pytestmark = pytest.mark.skipif(why_no_cgroup() is not None, reason=why_no_cgroup() or "")


class Cgroup:
    def __init__(self, limit: int):
        self.path = os.path.join(CGROUP_ROOT, f"hearth-governor-{os.getpid()}")
        os.mkdir(self.path)
        self.write("memory.limit_in_bytes", limit)

    def read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def write(self, name: str, value) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(str(value))

    def oom_kills(self) -> int:
        return int(dict(line.split() for line in self.read("memory.oom_control").splitlines()).get("oom_kill", 0))

    def enter(self) -> list[str]:
        """A command prefix that moves the command into this cgroup before it executes."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh"]

    def close(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def peak_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def test_the_agent_and_a_1080p_import_stay_within_a_512_mib_cgroup(tmp_path):
    source = str(tmp_path / "src1080.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=44100", "-t", str(SOURCE_SECONDS), "-c:v", "libx264", "-preset",
           "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", source)
    cgroup = Cgroup(LIMIT)
    node = Node(None, str(tmp_path / "agent"), {"HEARTH_MDNS": "false", "HEARTH_TRANSPORT_PORT": "0",
                                                "HEARTH_METRICS_PORT": "0", "REQUIRE_NATIVE": "1"})
    node.wrap = cgroup.enter()
    try:
        node.start()
        assert str(node.proc.pid) in cgroup.read("cgroup.procs").split()
        peaks = {"agent": 0, "import": 0}
        began = time.monotonic()
        importer = subprocess.Popen([*cgroup.enter(), sys.executable, "-m", "edge", "--data-dir", node.data_dir,
                                     "media", "import", source, "--name", "big", "--segment-seconds", "2", "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node.env)
        done = threading.Event()

        def sample():
            while not done.is_set():
                peaks["agent"] = max(peaks["agent"], peak_rss(node.proc.pid))
                peaks["import"] = max(peaks["import"], peak_rss(importer.pid))
                time.sleep(0.1)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            out, err = importer.communicate(timeout=180)
        finally:
            done.set()
            sampler.join()
        took = time.monotonic() - began
        assert importer.returncode == 0, err[-3000:]
        assert cgroup.oom_kills() == 0
        assert node.proc.poll() is None, "the agent was killed"
        node.status()   # and it still answers
        cid = json.loads(out)["cid"]
        cg_peak = int(cgroup.read("memory.max_usage_in_bytes"))
        fit = plan_transcode([(1920, 1080), (1280, 720), (854, 480), (640, 360)], LIMIT)
        print(f"\nmemory: agent + {SOURCE_SECONDS} s 1080p30 import (1080p,720p,480p,360p) in a {LIMIT >> 20} MiB "
              f"cgroup: import peak RSS {peaks['import'] >> 20} MiB, agent peak RSS {peaks['agent'] >> 20} MiB, "
              f"cgroup peak {cg_peak >> 20} MiB (page cache included), oom kills 0, import {took:.1f} s; "
              f"encoders sized to {fit.threads} threads, lookahead {fit.lookahead}")
    finally:
        node.stop()
        cgroup.close()
    with Store(node.data_dir) as store:
        root = tmp_path / "out"
        content.get(store, cid, str(root))
    durations = check_video_rendition(root, "1080p", 1920, 1080, tmp_path)
    assert abs(sum(durations) - SOURCE_SECONDS) < 0.2
    for name, w, h in (("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360)):
        assert check_video_rendition(root, name, w, h, tmp_path) == durations
    audio = ffprobe(str(root / "audio" / "index.m3u8"), "-show_entries", "stream=codec_name")
    assert audio["streams"][0]["codec_name"] == "aac"
