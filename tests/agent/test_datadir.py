"""The data directory: its marker (an unmounted data disk is refused, never made a fresh store) and the agent's
lock (one agent per data directory). Real processes, real files, loopback only."""

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.datadir import AGENT_LOCK, MARKER, AgentLock, AgentRunning, NotADataDir, require
from edge.identity import KEY_FILE, Identity
from edge.provisioning.device.firstboot import first_boot
from edge.store import Store
from tests.agent.netns import Node

LOOPBACK = {"HEARTH_MDNS": "false", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": "0",
            "HEARTH_METRICS_PORT": "0"}
# every command that opens the store; each must refuse a directory that is not a Hearth data directory
STORE_COMMANDS = [
    ("add", "{file}"), ("cat", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
    ("get", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e", "-o", "{out}"),
    ("pin", "add", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
    ("pin", "rm", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"), ("pin", "ls"), ("gc",),
    ("car", "export", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e", "-o", "{out}"),
    ("car", "import", "{file}"), ("store", "verify"), ("store", "stat"), ("store", "quota"),
    ("media", "import", "{file}"), ("media", "ls"), ("media", "rm", "x"),
    ("live", "publish", "testsrc", "--name", "x"), ("run",),
]


def hearth(data_dir, *args, env=None):
    return subprocess.run([sys.executable, "-m", "edge", "--data-dir", str(data_dir), *args], capture_output=True,
                          text=True, env={**os.environ, **LOOPBACK, **(env or {})}, timeout=60)


@pytest.mark.parametrize("exists", [True, False], ids=["empty directory", "no directory"])
def test_every_store_command_refuses_a_directory_without_the_marker(tmp_path, exists):
    """An unmounted data partition leaves an empty mount point: nothing may make a fresh store there."""
    data = tmp_path / "mnt" / "data"
    if exists:
        data.mkdir(parents=True)
    (tmp_path / "f.bin").write_bytes(b"something to add\n")
    runner = CliRunner()
    for args in STORE_COMMANDS:
        args = [a.format(file=tmp_path / "f.bin", out=tmp_path / "out") for a in args]
        result = runner.invoke(main, ["--data-dir", str(data), *args])
        lines = result.output.strip().splitlines()
        print(args[0], "->", lines)
        assert result.exit_code == 1 and len(lines) == 1, (args, result.output)
        assert f"no {MARKER}" in lines[0] and "mounted" in lines[0] and "hearth init" in lines[0], lines
        assert (os.listdir(data) == []) if exists else not data.exists(), (args, "something was written")
    assert not (tmp_path / "out").exists()


def test_the_agent_refuses_without_the_marker_too(tmp_path):
    r = hearth(tmp_path / "absent", "run")
    print(r.stderr)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and f"no {MARKER}" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "absent").exists()
    with pytest.raises(NotADataDir, match="hearth init"):
        require(str(tmp_path / "absent"))


def test_init_and_first_boot_write_the_marker(tmp_path):
    assert hearth(tmp_path / "a", "init").returncode == 0
    assert (tmp_path / "a" / MARKER).exists()
    (tmp_path / "boot").mkdir()
    first_boot(str(tmp_path / "boot"), str(tmp_path / "b"), fleet_pub=str(tmp_path / "none"), log=lambda m: None)
    assert (tmp_path / "b" / MARKER).exists()
    # a node made by first boot is usable by the commands straight away
    assert hearth(tmp_path / "b", "pin", "ls").returncode == 0


@pytest.mark.parametrize("held", ["store", "identity"])
def test_a_data_directory_from_before_the_marker_is_adopted(tmp_path, held):
    """Made by a Hearth without the marker: a catalog or an identity key says it is a node's data."""
    data = tmp_path / "old"
    if held == "store":
        with Store(str(data)):
            pass
    else:
        data.mkdir()
        Identity.generate().save(str(data / KEY_FILE))
    assert not (data / MARKER).exists()
    r = hearth(data, "store", "stat", "--json")
    assert r.returncode == 0, r.stderr
    assert (data / MARKER).exists()


def test_one_agent_per_data_directory(tmp_path):
    a = Node(None, str(tmp_path / "a"), LOOPBACK)
    cid = a.hearth("add", "-q", __file__).strip()
    a.start()
    try:
        with open(tmp_path / "a" / AGENT_LOCK) as f:
            assert int(f.read()) == a.proc.pid
        second = hearth(a.data_dir, "run")
        print(second.stderr)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(lines) == 1 and "Traceback" not in second.stderr
        assert f"PID {a.proc.pid}" in lines[0] and "already running" in lines[0]
        # the first agent still answers on its own control socket, and commands use the store beside it
        assert a.status()["node"] == a.node_id
        assert a.hearth("cat", cid).encode() == open(__file__, "rb").read()
        assert a.hearth("add", "-q", str(tmp_path / "a" / "hearth.toml")).startswith("baf")
        assert a.hearth("store", "verify").startswith("checked")
        assert a.proc.poll() is None
        a.stop(signal.SIGKILL)          # the kernel frees the lock however the agent ends
        a.start()
        assert a.status()["node"] == a.node_id
    finally:
        a.stop()


def test_the_agent_lock_is_not_the_store_lock(tmp_path):
    data = str(tmp_path)
    assert hearth(data, "init").returncode == 0
    with AgentLock(data):
        with pytest.raises(AgentRunning, match=f"PID {os.getpid()}"):
            AgentLock(data)
        with Store(data) as store:      # GC and verify take the store's lock alone beside a running agent
            assert store.try_exclusive()
            store.release()
    with AgentLock(data):               # released: taken again
        pass
