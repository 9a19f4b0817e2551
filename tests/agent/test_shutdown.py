"""SIGTERM while a node is fetching blocks from another: it ends within its deadline and leaves no half-written
block (its store verifies clean, its temporary area is empty). Two agents on loopback, real sockets."""

import os
import signal
import socket
import subprocess
import sys
import time

from edge.store import Store
from tests.agent.netns import Node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_during_a_transfer_ends_in_time_and_leaves_nothing_half_written(tmp_path):
    env = {"HEARTH_MDNS": "false", "HEARTH_SHUTDOWN_GRACE": "3"}
    # the source uploads at 16 MB/s (a home uplink, not loopback's GB/s), so the transfer is still running
    a = Node(None, str(tmp_path / "a"), {**env, "HEARTH_UPLOAD_LIMIT": "16000000"})
    b = Node(None, str(tmp_path / "b"), env)
    pa, pb = free_port(), free_port()
    src = tmp_path / "big"
    src.write_bytes(os.urandom(96 << 20))
    cid = a.hearth("add", "-q", str(src)).strip()
    a.start("--port", str(pa), "--metrics-port", "0")
    b.start("--port", str(pb), "--metrics-port", "0", "--peer", f"{a.node_id}@127.0.0.1:{pa}")
    try:
        getter = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", b.data_dir, "get", cid, "-o",
                                   str(tmp_path / "copy")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=b.env)
        deadline = time.monotonic() + 30
        while b.status()["fetched"]["blocks"] < 20:   # well into the transfer
            assert time.monotonic() < deadline, b.logs()
            time.sleep(0.05)
        took = b.stop(signal.SIGTERM)
        assert took < 3.0 + 1.0, f"took {took:.2f} s: {b.logs()}"
        assert b.proc.returncode == 0, b.logs()
        getter.wait(10)
        assert getter.returncode != 0   # its agent went away mid-fetch: it says so instead of writing a copy
        assert not (tmp_path / "copy").exists()
    finally:
        a.stop()
        b.stop(signal.SIGKILL)
    with Store(b.data_dir) as store:
        report = store.verify()
        assert report.ok and report.corrupt == [] and report.checked >= 20
        leftovers = [n for d in os.listdir(store.files.tmp_root)
                     for n in os.listdir(os.path.join(store.files.tmp_root, d)) if n != ".lock"]
        assert leftovers == []


def test_get_on_a_terminal_shows_the_fetch_progressing_and_the_copy_is_exact(tmp_path):
    """`hearth get` with stderr on a terminal (a real pseudo-terminal) says how much it has fetched."""
    import pty
    env = {"HEARTH_MDNS": "false"}
    a = Node(None, str(tmp_path / "a"), {**env, "HEARTH_UPLOAD_LIMIT": "8000000"})   # ~2 s for 16 MiB
    b = Node(None, str(tmp_path / "b"), env)
    pa, pb = free_port(), free_port()
    data = os.urandom(16 << 20)
    (tmp_path / "src").write_bytes(data)
    cid = a.hearth("add", "-q", str(tmp_path / "src")).strip()
    a.start("--port", str(pa), "--metrics-port", "0")
    b.start("--port", str(pb), "--metrics-port", "0", "--peer", f"{a.node_id}@127.0.0.1:{pa}")
    master, slave = pty.openpty()
    try:
        got = subprocess.run([sys.executable, "-m", "edge", "--data-dir", b.data_dir, "get", cid, "-o",
                              str(tmp_path / "copy")], stdout=subprocess.PIPE, stderr=slave, env=b.env, timeout=60)
        os.close(slave)
        shown = b""
        try:
            while chunk := os.read(master, 65536):
                shown += chunk
        except OSError:   # EIO once the terminal's other side is closed and read
            pass
    finally:
        os.close(master)
        a.stop()
        b.stop()
    assert got.returncode == 0, shown
    assert (tmp_path / "copy").read_bytes() == data
    assert b"fetching from neighbours:" in shown and b"MiB" in shown
