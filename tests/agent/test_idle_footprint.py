"""An agent that transcodes nothing does not carry FFmpeg: PyAV is imported by the code that transcodes, probes or
tries encoders, when it first runs (`import av` alone is ~17 MiB of resident memory: FFmpeg's libraries and
their tables, a quarter of an idle agent on a small box). A real `hearth run` on loopback; its memory map is
read from /proc."""

import os
import subprocess
import sys

from tests.agent.netns import Node
from tests.agent.test_cli_agent import LOOPBACK

FFMPEG_LIBS = ("libavcodec", "libavformat", "libavfilter", "libx264", "libx265")


def mapped_ffmpeg(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {lib for line in f for lib in FFMPEG_LIBS if lib in line}


def test_an_idle_agent_has_not_loaded_pyav_or_ffmpeg(tmp_path):
    node = Node(None, str(tmp_path / "n"), LOOPBACK).start()
    try:
        status = node.status()   # a command answered: the agent is past its start, every service running
        assert status["node"] == node.node_id
        assert mapped_ffmpeg(node.proc.pid) == set(), "the idle agent mapped FFmpeg's libraries (PyAV imported)"
    finally:
        node.stop()
    assert node.proc.returncode == 0, node.logs()


def test_importing_the_agent_and_the_cli_imports_no_pyav():
    code = ("import sys, edge.agent, edge.cli, edge.media.transcode, edge.media.probe, edge.media.encoders, "
            "edge.media.liveservice; print(sorted(m for m in sys.modules if m == 'av' or m.startswith('av.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_transcoding_modules_still_find_pyav_when_they_run():
    import pytest

    from edge.media import encoders, probe
    from edge.media.errors import MediaError
    # a file that is not media goes through av.open and PyAV's own error, turned into a message naming the file
    with pytest.raises(MediaError, match="test_idle_footprint.py"):
        probe.probe(__file__)
    # the encoder trial opens and runs libx264 through PyAV (PyAV's wheel carries it)
    assert encoders.choose("libx264").usable
