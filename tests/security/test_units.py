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
