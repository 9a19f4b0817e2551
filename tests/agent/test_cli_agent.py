"""The CLI beside the agent, as a user meets it: busy ports, the gateway's real URL, `get`/`cat` with no agent,
a failed `get`. Real `hearth` processes on loopback, real sockets, real files."""

import http.client
import json
import os
import socket
import subprocess
import sys

import pytest

from edge.store import Store
from edge.ipld.cid import parse_cid
from edge.ipld.dagpb import parse_pbnode
from tests.agent.netns import Node
from tests.agent.test_shutdown import free_port
from tests.store.trees import pattern

LOOPBACK = {"HEARTH_MDNS": "false", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": "0",
            "HEARTH_METRICS_PORT": "0", "HEARTH_GATEWAY_PORT": "0"}
MISSING = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def hearth(data_dir, *args, env=None):
    return subprocess.run([sys.executable, "-m", "edge", "--data-dir", str(data_dir), *args], capture_output=True,
                          text=True, env={**os.environ, **LOOPBACK, **(env or {})}, timeout=60)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("setting, flag", [("transport_port", "--port"), ("gateway_port", "--gateway-port"),
                                           ("metrics_port", "--metrics-port")])
def test_a_busy_port_is_one_line_naming_the_port_its_setting_and_its_flag(tmp_path, setting, flag):
    assert hearth(tmp_path, "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = hearth(tmp_path, "run", flag, str(port))
    print(r.stderr)
    errors = error_lines(r.stderr)
    assert r.returncode == 1 and len(errors) == 1 and len(r.stderr.splitlines()) <= 3, r.stderr
    assert f"port {port} ({setting}) is already in use" in errors[0] and f"`hearth run {flag} N`" in errors[0]
    assert flag in hearth(tmp_path, "run", "--help").stdout   # the flag named is spelled as `hearth run` takes it
    # the same port from the config file names the same setting and flag
    (tmp_path / "hearth.toml").write_text(f"{setting} = {port}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = hearth(tmp_path, "run", env={f"HEARTH_{setting.upper()}": str(port)})
    assert r.returncode == 1 and f"port {port} ({setting})" in error_lines(r.stderr)[0]


def test_a_config_error_from_a_run_flag_names_a_flag_run_takes(tmp_path):
    assert hearth(tmp_path, "init").returncode == 0
    r = hearth(tmp_path, "run", "--port", "70000")
    print(r.stderr)
    errors = error_lines(r.stderr)
    assert r.returncode == 1 and len(errors) == 1
    named = errors[0].split("Error: ", 1)[1].split(":", 1)[0]   # the flag the message starts with
    assert named.startswith("--") and named in hearth(tmp_path, "run", "--help").stdout


@pytest.fixture(scope="module")
def plain_agent(tmp_path_factory):
    """An agent on loopback with the gateway off and no neighbour, shared by the tests that only ask it
    (none writes to its store)."""
    node = Node(None, str(tmp_path_factory.mktemp("plain") / "n"), LOOPBACK).start()
    try:
        yield node
    finally:
        node.stop()


def test_urls_come_from_the_running_agent(tmp_path):
    node = Node(None, str(tmp_path / "n"), LOOPBACK)
    r = node.run("status")
    assert r.returncode == 1 and "no agent is running" in r.stderr
    gateway = free_port()
    node.start("--gateway-port", str(gateway))
    try:
        info = node.status()
        print(info["gateway_url"])
        assert info["gateway_port"] == gateway and info["gateway_url"] == f"http://127.0.0.1:{gateway}/"
        text = node.hearth("status")
        assert f"page      http://127.0.0.1:{gateway}/\n" in text and f"player    http://127.0.0.1:{gateway}/watch/" in text
        conn = http.client.HTTPConnection("127.0.0.1", gateway, timeout=10)
        for path in ("/", "/watch/"):
            conn.request("GET", path)
            reply = conn.getresponse()
            assert reply.status == 200 and b"<html" in reply.read()  # the URLs shown are the ones that serve
        conn.close()
        logs = node.logs()   # what `make run` shows once it serves
        assert f"status page at http://127.0.0.1:{gateway}/\n" in logs
        assert f"player at http://127.0.0.1:{gateway}/watch/\n" in logs
    finally:
        node.stop()


def test_an_agent_without_a_gateway_shows_no_url_and_says_why(plain_agent):
    assert plain_agent.status()["gateway_url"] is None           # gateway_port = 0
    assert "player    none (the gateway is off" in plain_agent.hearth("status")


def test_get_and_cat_without_an_agent_say_no_neighbour_was_asked(tmp_path):
    data = tmp_path / "data"
    assert hearth(data, "init").returncode == 0
    before = sorted(os.listdir(tmp_path))
    for args in (("cat", MISSING), ("get", MISSING, "-o", str(tmp_path / "out")),
                 ("cat", f"{MISSING}/name")):
        r = hearth(data, *args)
        print(r.stderr)
        errors = error_lines(r.stderr)
        assert r.returncode == 1 and len(errors) == 1 and r.stdout == ""
        assert "does not hold" in errors[0] and "no neighbour was asked" in errors[0] and "hearth run" in errors[0]
    assert sorted(os.listdir(tmp_path)) == before      # no output file, no partial one


def _corrupt_last_leaf(data_dir: str, file_cid: str) -> None:
    with Store(data_dir) as store:
        leaf = parse_pbnode(store.get(parse_cid(file_cid))).links[-1].cid
        path = store.files.path(leaf)
    os.chmod(path, 0o644)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(b"\xff" * size)


def test_a_failed_get_leaves_no_output(tmp_path):
    """The blocks are listed (so the read starts and writes) but the last one is corrupt: nothing is left."""
    data = tmp_path / "data"
    assert hearth(data, "init").returncode == 0
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"written before the failure\n")
    (tree / "b.bin").write_bytes(pattern(1_000_000))      # four leaves: three are written before the bad one
    file_cid = hearth(data, "add", "-q", str(tree / "b.bin")).stdout.strip()
    tree_cid = hearth(data, "add", "-q", str(tree)).stdout.strip()
    _corrupt_last_leaf(str(data), file_cid)
    out = tmp_path / "out"
    out.mkdir()
    for cid, name in ((file_cid, "copy.bin"), (tree_cid, "copy-tree")):
        r = hearth(data, "get", cid, "-o", str(out / name))
        print(r.stderr)
        assert r.returncode == 1 and len(error_lines(r.stderr)) == 1
        assert os.listdir(out) == []                       # neither OUTPUT nor a temporary file
    # and a get that succeeds still writes OUTPUT whole
    good = hearth(data, "add", "-q", __file__).stdout.strip()
    assert hearth(data, "get", good, "-o", str(out / "ok.py")).returncode == 0
    assert (out / "ok.py").read_bytes() == open(__file__, "rb").read() and os.listdir(out) == ["ok.py"]
    r = hearth(data, "get", good, "-o", str(out / "ok.py"))
    assert r.returncode == 1 and "already exists" in error_lines(r.stderr)[0]


def test_get_with_an_agent_and_no_neighbour_says_so_and_leaves_nothing(tmp_path, plain_agent):
    node = plain_agent
    r = node.run("get", MISSING, "-o", str(tmp_path / "out"))
    print(r.stderr)
    errors = error_lines(r.stderr)
    assert r.returncode == 1 and len(errors) == 1 and not (tmp_path / "out").exists()
    assert "no neighbour was asked" not in errors[0]     # the agent ran and asked; it says what happened
    assert json.loads(node.hearth("status", "--json"))["node"] == node.node_id


def test_get_and_cat_replace_a_corrupt_block_through_the_agent(tmp_path):
    """A block corrupt here while a neighbour holds a good copy: `hearth get` and `cat` have the running agent
    fetch that block again and succeed (they failed once with "quarantined", issue 14's chaos test)."""
    a = Node(None, str(tmp_path / "a"), LOOPBACK)
    b = Node(None, str(tmp_path / "b"), LOOPBACK)
    data = pattern(1_000_000)
    (tmp_path / "f.bin").write_bytes(data)
    cid = a.hearth("add", "-q", str(tmp_path / "f.bin")).strip()
    assert b.hearth("add", "-q", str(tmp_path / "f.bin")).strip() == cid
    pa = free_port()
    a.start("--port", str(pa))
    b.start("--peer", f"{a.node_id}@127.0.0.1:{pa}")
    try:
        _corrupt_last_leaf(b.data_dir, cid)
        r = b.run("cat", cid, "--offset", "10", text=False)
        print(r.stderr.decode())
        assert r.returncode == 0 and r.stdout == data[10:], r.stderr   # every byte once, from where it got to
        assert b"fetched a good copy from neighbours" in r.stderr
        _corrupt_last_leaf(b.data_dir, cid)
        r = b.run("get", cid, "-o", str(tmp_path / "out.bin"))
        print(r.stderr)
        assert r.returncode == 0 and (tmp_path / "out.bin").read_bytes() == data, r.stderr
        assert os.listdir(tmp_path).count("out.bin") == 1 and not [n for n in os.listdir(tmp_path) if "partial" in n]
        # with the neighbour's copy corrupt too, a corrupt block is one line saying no neighbour gave a good copy
        # (a neighbour gone would do the same after the agent's 10 s wait to reach it)
        _corrupt_last_leaf(a.data_dir, cid)
        _corrupt_last_leaf(b.data_dir, cid)
        r = b.run("cat", cid, text=False)
        stderr = r.stderr.decode()
        print(stderr)
        errors = error_lines(stderr)
        assert r.returncode == 1 and len(errors) == 1 and "corrupt" in errors[0], stderr
        assert data.startswith(r.stdout) and len(r.stdout) < len(data)   # cut short, never a wrong byte
    finally:
        a.stop()
        b.stop()
