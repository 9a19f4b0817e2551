"""One x86-64 image per test session, built with a seed (several tests use it)."""

import os
import pathlib
import shutil
import time

import pytest

from tests.images import builds
from tests.images.builds import hearth  # noqa: F401 - the image tests' helper

TOOLS = ["mmdebstrap", "mkfs.vfat", "mcopy", "mkfs.ext4", "sfdisk", "zstd", "qemu-system-x86_64"]
missing = [t for t in TOOLS if shutil.which(t) is None]
WHY_NOT = ("image builds need root" if os.geteuid() != 0 else
           f"missing {', '.join(missing)}" if missing else
           "no OVMF firmware" if not os.path.exists("/usr/share/OVMF/OVMF_CODE_4M.fd") else None)
VERSION = builds.VERSION
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOGS = os.path.join(REPO, "build", "test-logs")


@pytest.fixture(scope="session")
def built():
    """The x86-64 test image (started in the background when collection ended: tests/images/builds.py), with a
    seed and a root shell on the serial console that the update test drives the device through."""
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    out, summary = builds.SESSION.result("x86-64")
    return pathlib.Path(out), summary


def shell(vm, command, expect, timeout=120, stage=None):
    """Type command on the test image's root console; the console output from then on, once expect shows."""
    mark = len(vm.output())
    vm.send(command)
    vm.wait_for(expect, timeout, after=mark, stage=stage or f"`{command}` until {expect!r}")
    return vm.output()[mark:]


@pytest.fixture
def console_log(request):
    """Where a VM's serial console is kept for this test: build/test-logs/TEST-TIME.console.log, kept after the
    test (an artefact; a failure names it). The newest ten of each test are kept."""
    os.makedirs(LOGS, exist_ok=True)
    name = request.node.name.replace("/", "_")
    old = sorted(f for f in os.listdir(LOGS) if f.startswith(name + "-") and f.endswith(".console.log"))
    for f in old[:-9]:
        os.unlink(os.path.join(LOGS, f))
    path = os.path.join(LOGS, f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.console.log")
    print(f"console log: {path}")
    return path
