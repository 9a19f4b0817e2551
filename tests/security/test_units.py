"""The agent's unit asks systemd for least privilege (issue 20, point 5): no capabilities, a private umask, a
system-call filter, and the descriptor limit. The x86-64 image boot tests run the agent under this very unit
(real systemd in QEMU), which is what shows the filter lets the agent serve; this checks it stays asked for."""

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.attack

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "provisioning", "hearth.service")


def _service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = None
    with open(UNIT) as f:          # systemd allows a key several times: keep every value, in order
        for line in f:
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values.setdefault(key, []).append(value)
    return values


def test_unit_drops_every_capability_and_keeps_its_files_private():
    service = _service()
    assert service["CapabilityBoundingSet"] == [""]
    assert service["AmbientCapabilities"] == [""]
    assert service["UMask"] == ["0077"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert int(service["LimitNOFILE"][0]) >= 8192


def test_unit_filters_system_calls_and_fails_them_softly():
    service = _service()
    filters = service["SystemCallFilter"]
    assert "@system-service" in filters
    denied = [f for f in filters if f.startswith("~")]
    assert denied and "@privileged" in denied[0]
    assert service["SystemCallErrorNumber"] == ["EPERM"]   # an error the agent reports, not a SIGSYS kill
    if shutil.which("systemd-analyze"):                    # every group named is one this systemd knows
        for group in ["@system-service", *denied[0].lstrip("~").split()]:
            out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True)
            assert out.returncode == 0 and group in out.stdout, out.stderr


HOST_PYTHON = "/usr/bin/python3"     # Debian's, with python3-seccomp


def _can_filter() -> str | None:
    if not shutil.which("systemd-analyze"):
        return "systemd-analyze is not installed"
    if subprocess.run([HOST_PYTHON, "-c", "import seccomp"], capture_output=True).returncode != 0:
        return "python3-seccomp is not installed (make installs it)"
    return None


def test_the_agent_starts_and_serves_under_the_units_system_call_filter(tmp_path):
    """The unit's filter applied as systemd applies it (an allow list less the denied groups, EPERM for the
    rest), to a real agent: it starts, serves its control socket and a block over the gateway, and stops on
    SIGTERM. A filter that refused what libzmq or Python needs would abort the agent here instead of on a box."""
    import signal
    import urllib.request
    from tests.agent.netns import Node
    why = _can_filter()
    if why:
        pytest.skip(why)
    import socket
    with socket.socket() as s:                     # a free port for the gateway (0 would turn it off)
        s.bind(("127.0.0.1", 0))
        gateway = s.getsockname()[1]
    node = Node(None, str(tmp_path / "n"), {"HEARTH_MDNS": "false", "HEARTH_TRANSPORT_PORT": "0",
                                             "HEARTH_METRICS_PORT": "0", "HEARTH_GATEWAY_PORT": str(gateway)})
    cid = node.hearth("add", "-q", __file__).strip()
    node.wrap = [HOST_PYTHON, os.path.join(os.path.dirname(__file__), "seccomp_exec.py"), UNIT]
    node.start()
    try:
        port = node.status()["gateway_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ipfs/{cid}", timeout=20) as r:
            assert r.read() == open(__file__, "rb").read()
        node.stop(signal.SIGTERM, timeout=20)
        assert node.proc.returncode == 0, node.logs()
    finally:
        node.stop(signal.SIGKILL)
