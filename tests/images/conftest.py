"""One x86-64 image per test session, built with a seed (several tests use it)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

TOOLS = ["mmdebstrap", "mkfs.vfat", "mcopy", "mkfs.ext4", "sfdisk", "zstd", "qemu-system-x86_64"]
missing = [t for t in TOOLS if shutil.which(t) is None]
WHY_NOT = ("image builds need root" if os.geteuid() != 0 else
           f"missing {', '.join(missing)}" if missing else
           "no OVMF firmware" if not os.path.exists("/usr/share/OVMF/OVMF_CODE_4M.fd") else None)
VERSION = "0.0.1-test"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOGS = os.path.join(REPO, "build", "test-logs")


def hearth(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    out = tmp_path_factory.mktemp("images")
    key = out / "sign.key"
    assert hearth("fleet", "init", "-o", str(key)).returncode == 0
    seed = out / "seed.toml"
    r = hearth("provision", "seed", "-o", str(seed), "--name", "kitchen", "--quota", "100M", "--wifi-ssid",
               "home", "--wifi-psk-file", "-", input="hunter22\n")
    assert r.returncode == 0, r.stderr
    # a test image: a root shell on the serial console lets the update test drive the device
    r = hearth("image", "build", "x86-64", "-o", str(out), "--key", str(key), "--seed", str(seed), "--version",
               VERSION, "--debug-console", timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    yield out, json.loads(r.stdout)
    shutil.rmtree(out, ignore_errors=True)


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
