"""The agent under systemd's protocols: READY=1 and WATCHDOG=1 on $NOTIFY_SOCKET (a real Unix datagram socket),
journald priority prefixes, and a unit file that asks for both."""

import configparser
import os
import signal
import socket
import time

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
