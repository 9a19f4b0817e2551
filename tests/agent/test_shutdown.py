"""SIGTERM while a node is fetching blocks from another: it ends within its deadline and leaves no half-written
block (its store verifies clean, its temporary area is empty). Two agents on loopback, real sockets."""

import os
import re
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
    a = Node(None, str(tmp_path / "a"), {**env, "HEARTH_UPLOAD_LIMIT": "16000000", "HEARTH_LAN_UPLOAD_LIMIT": "16000000"})
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
    a = Node(None, str(tmp_path / "a"), {**env, "HEARTH_UPLOAD_LIMIT": "8000000", "HEARTH_LAN_UPLOAD_LIMIT": "8000000"})   # ~2 s for 16 MiB
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
    # the total (from the DAG's sizes), the percent and the time left
    assert re.search(rb"of 16\.0 MiB \(\d+%\), [\d,]+ blocks, [\d.]+ MB/s, \d+ s left", shown), shown[-300:]


def test_sigterm_drains_every_service_in_reverse_start_order_within_the_deadline(tmp_path):
    """An agent sending a file to a browser over HTTP and blocks to a neighbour over the transport gets SIGTERM:
    each service drains, the last started first (its log says so, one line each), the HTTP response under way
    goes out whole, and the agent exits 0 within shutdown_grace."""
    import http.client
    import threading

    import trio

    from edge.identity import Identity
    from edge.ipld.cid import parse_cid
    from edge.store import content
    from edge.transport.client import PeerRefused, TransportError, open_client
    grace = 10.0
    gateway, px = free_port(), free_port()
    x = Node(None, str(tmp_path / "x"), {"HEARTH_MDNS": "false", "HEARTH_SHUTDOWN_GRACE": str(grace),
                                         "HEARTH_GATEWAY_PORT": str(gateway)})
    page = os.urandom(16 << 20)   # more than loopback's socket buffers hold: the gateway is still sending it
    (tmp_path / "page").write_bytes(page)
    (tmp_path / "big").write_bytes(os.urandom(16 << 20))
    page_cid = x.hearth("add", "-q", str(tmp_path / "page")).strip()
    big_cid = x.hearth("add", "-q", str(tmp_path / "big")).strip()
    with Store(x.data_dir) as store:
        cids = [cid for cid, _ in content.walk_blocks(store, parse_cid(big_cid))]
    x.start("--port", str(px), "--metrics-port", str(free_port()))
    got, started = {"blocks": 0}, threading.Event()

    def browser():   # reads at ~6 MB/s: the response is still going out when the signal comes
        conn = http.client.HTTPConnection("127.0.0.1", gateway, timeout=30)
        conn.request("GET", f"/ipfs/{page_cid}")
        response = conn.getresponse()
        body = response.read(64 << 10)
        started.set()
        while len(body) < len(page):
            chunk = response.read(64 << 10)
            if not chunk:
                break
            body += chunk
            time.sleep(0.01)
        got["status"], got["body"] = response.status, body

    def neighbour():   # a block every 100 ms until the node stops answering
        async def fetch():
            async with open_client(Identity.generate(), f"tcp://127.0.0.1:{px}", x.node_id, timeout=3) as c:
                for cid in cids:
                    await c.get(cid)
                    got["blocks"] += 1
                    await trio.sleep(0.1)
        try:
            trio.run(fetch)
        except (PeerRefused, TransportError) as exc:
            got["neighbour"] = repr(exc)
    readers = [threading.Thread(target=neighbour), threading.Thread(target=browser)]
    try:
        readers[0].start()
        deadline = time.monotonic() + 30
        while got["blocks"] < 4:   # the neighbour is into its transfer
            assert time.monotonic() < deadline, x.logs()
            time.sleep(0.05)
        readers[1].start()
        assert started.wait(30), x.logs()             # the browser has the first bytes; the rest are coming
        before = x.status()["services"]
        at_signal = got["blocks"]
        took = x.stop(signal.SIGTERM, timeout=grace + 5)
        for reader in readers:
            reader.join(30)
    finally:
        x.stop(signal.SIGKILL)
    logs = x.logs()
    print(f"stopped in {took:.2f} s (grace {grace:g} s); the neighbour had {at_signal} of {len(cids)} blocks at "
          f"the signal, {got['blocks']} in the end, then {got.get('neighbour')}")
    print("\n".join(line for line in logs.splitlines() if "stopping" in line))
    assert x.proc.returncode == 0, logs
    assert took < grace + 1.0, logs
    drained = re.findall(r"stopping: (\w+) drained in ([\d.]+) s", logs)
    assert [name for name, _ in drained] == list(reversed(list(before))), logs
    assert "cut at the deadline" not in logs
    assert got["status"] == 200 and got["body"] == page   # the response under way went out whole
    assert before["gateway"]["answering"] == 1 and before["transport"]["blocks_served"] >= 4
    assert 4 <= at_signal < len(cids)                     # the neighbour was mid-transfer at the signal


def test_a_drain_still_running_at_the_deadline_is_cut_and_the_agent_stops_in_time(tmp_path):
    """A browser that stops reading holds its response (and so the gateway's drain) for as long as it likes: at
    shutdown_grace the drain is cut, the services after it are cancelled without one, and the agent exits."""
    grace = 2.0
    gateway = free_port()
    x = Node(None, str(tmp_path / "x"), {"HEARTH_MDNS": "false", "HEARTH_SHUTDOWN_GRACE": str(grace),
                                         "HEARTH_GATEWAY_PORT": str(gateway)})
    (tmp_path / "page").write_bytes(os.urandom(32 << 20))
    cid = x.hearth("add", "-q", str(tmp_path / "page")).strip()
    x.start("--port", str(free_port()), "--metrics-port", "0")
    stalled = socket.socket()
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", gateway))
        stalled.sendall(f"GET /ipfs/{cid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert stalled.recv(4096).startswith(b"HTTP/1.1 200")   # then it reads nothing more
        deadline = time.monotonic() + 30
        while x.status()["services"]["gateway"]["answering"] != 1:
            assert time.monotonic() < deadline, x.logs()
            time.sleep(0.05)
        took = x.stop(signal.SIGTERM, timeout=grace + 10)
    finally:
        stalled.close()
        x.stop(signal.SIGKILL)
    logs = x.logs()
    print(f"stopped in {took:.2f} s (grace {grace:g} s)")
    print("\n".join(line for line in logs.splitlines() if "stopping" in line))
    assert x.proc.returncode == 0, logs
    assert took < grace + 2.0, logs   # not the minute the stalled response could have held it
    assert re.search(r"stopping: gateway cut at the deadline", logs), logs
    assert re.search(r"stopping: transport (drained|cancelled)", logs), logs   # and it went on to the rest
