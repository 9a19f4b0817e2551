"""The agent under systemd's protocols: READY=1 and WATCHDOG=1 on $NOTIFY_SOCKET (a real Unix datagram socket),
journald priority prefixes, and a unit file that asks for both."""

import configparser
import os
import signal
import socket
import time

import pytest

from tests.agent.netns import Node

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "provisioning", "hearth.service")


def test_ready_and_watchdog_reach_notify_socket_and_logs_carry_priorities(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "JOURNAL_STREAM": "8:1234", "HEARTH_MDNS": "false"}
    node = Node(None, str(tmp_path / "n"), env)
    node.start("--port", "0", "--metrics-port", "0")
    try:
        seen = set()
        deadline = time.monotonic() + 10
        while not {"READY=1", "WATCHDOG=1"} <= seen and time.monotonic() < deadline:
            seen.update(sock.recv(4096).decode().split("\n"))
        assert {"READY=1", "WATCHDOG=1"} <= seen
        node.stop(signal.SIGTERM)
        while "STOPPING=1" not in seen:
            seen.update(sock.recv(4096).decode().split("\n"))   # times out (fails) if it never comes
    finally:
        node.stop(signal.SIGKILL)
        sock.close()
    lines = [line for line in node.logs().splitlines() if line]
    assert lines and all(line[0] == "<" and line[2] == ">" for line in lines), lines[:3]
    assert any(line.startswith("<6>edge.agent: node ") for line in lines)


def test_unit_file_is_a_notify_service_with_a_watchdog():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert "hearth" in service["ExecStart"] and service["ExecStart"].endswith(" run")
    assert service["KillSignal"] == "SIGTERM"


@pytest.mark.trio
async def test_the_watchdog_is_not_pinged_while_the_transport_is_stuck(tmp_path, monkeypatch, caplog):
    """A read that never returns (a dying card; here a store whose get blocks until released, since a real
    failing disk cannot be made on this machine) stops the pings; they resume once it returns."""
    import threading

    import trio

    from edge.agent import _watchdog
    from edge.identity import Identity
    from edge.store import Store
    from edge.ipld.cid import CID
    from edge.transport.client import open_client
    from edge.transport.server import Policy, serve_transport
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")   # a ping every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def pings() -> int:
        n = 0
        while True:
            try:
                n += sock.recv(4096).decode().split("\n").count("WATCHDOG=1")
            except BlockingIOError:
                return n
    release = threading.Event()
    with Store(str(tmp_path / "s")) as store:
        store.put(CID.for_block(b"x"), b"x")
        real = store.get
        store.get = lambda cid: (release.wait(30), real(cid))[1]
        me, node = Identity.generate(), Identity.generate()
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_transport, store, node, Policy(), "tcp://127.0.0.1:0")
            endpoint = server.endpoint
            nursery.start_soon(_watchdog, server, 0.3)
            await trio.sleep(0.5)
            assert pings() >= 2
            async with open_client(me, endpoint, node.node_id, timeout=10) as c:
                async with trio.open_nursery() as reads:
                    reads.start_soon(c.get, CID.for_block(b"x"))
                    await trio.sleep(0.6)   # stuck past the limit
                    pings()
                    await trio.sleep(0.5)
                    assert pings() == 0
                    assert "stuck" in caplog.text
                    release.set()
                await trio.sleep(0.5)
                assert pings() >= 2
            nursery.cancel_scope.cancel()
    sock.close()
