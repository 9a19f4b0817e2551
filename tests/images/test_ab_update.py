"""A/B updates in QEMU on the x86-64 test image: a signed bundle installs to the other slot, boots on trial and
is committed when healthy; a bundle signed by another key is refused; a bundle whose agent fails its health
check rolls back by itself; a VM killed during an install boots the good slot.

The test image has a root shell on its serial console (built with --debug-console), which the test types into.
"""

import os
import subprocess

import pytest

from images.qemu import VM

from .conftest import VERSION, WHY_NOT, hearth, shell

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
NAME = f"hearth-x86-64-{VERSION}"
BROKEN_UNIT = """[Unit]
Description=Hearth node (broken on purpose by the update test)
[Service]
ExecStart=/bin/false
Restart=on-failure
RestartSec=2
[Install]
WantedBy=multi-user.target
"""


def pad(path):
    """QEMU wants raw disks in whole sectors."""
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\0" * (-size % 512))
    return path


@pytest.fixture(scope="module")
def bundles(built, tmp_path_factory):
    out, _ = built
    d = tmp_path_factory.mktemp("bundles")
    image, key = str(out / f"{NAME}.img"), str(out / "sign.key")
    good = str(d / "good.bundle")
    r = hearth("update", "bundle", image, "-o", good, "--key", key, "--version", "0.0.2")
    assert r.returncode == 0, r.stderr
    other = d / "other.key"
    assert hearth("fleet", "init", "-o", str(other)).returncode == 0
    foreign = str(d / "foreign.bundle")
    assert hearth("update", "bundle", image, "-o", foreign, "--key", str(other), "--version", "6.6.6").returncode == 0
    # a root whose agent cannot start: edited in the file system image with debugfs (nothing is mounted)
    import json
    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())
    part = next(p for p in manifest["partitions"] if p["name"] == "root-a")
    root = d / "broken-root.img"
    from images.disk import ext4_bytes
    with open(image, "rb") as src, open(root, "wb") as dst:
        left = ext4_bytes(src, part["start"])
        src.seek(part["start"])
        while left:
            chunk = src.read(min(4 << 20, left))
            dst.write(chunk)
            left -= len(chunk)
    unit = d / "hearth.service"
    unit.write_text(BROKEN_UNIT)
    for cmd in ("rm /etc/systemd/system/hearth.service", f"write {unit} /etc/systemd/system/hearth.service"):
        subprocess.run(["debugfs", "-w", "-R", cmd, str(root)], check=True, capture_output=True)
    broken = str(d / "broken.bundle")
    r = hearth("update", "bundle", image, "-o", broken, "--key", key, "--version", "0.0.3-broken",
               "--root-image", str(root))
    assert r.returncode == 0, r.stderr
    root.unlink()
    return {k: pad(v) for k, v in (("good", good), ("foreign", foreign), ("broken", broken))}


def test_update_commit_refuse_rollback_and_power_cut(built, bundles, tmp_path):
    out, _ = built
    disk = str(tmp_path / "disk.img")
    subprocess.run(["cp", "--sparse=always", str(out / f"{NAME}.img"), disk], check=True)
    drives = [bundles["good"], bundles["foreign"], bundles["broken"], bundles["good"]]
    vm = VM(disk, drives=drives).start()
    try:
        vm.wait_for("edge.agent: node hn", 400)
        vm.wait_for("root@hearth", 120)
        # 1. a signed bundle: installed to slot b, boots on trial, committed when healthy
        shell(vm, "hearth update apply /dev/vdb --reboot", "boots on trial next time", 900)
        mark = len(vm.output())
        vm.wait_for("hearth.slot=b", 300, after=mark)
        vm.wait_for("hearth: healthy", 300, after=mark)
        vm.wait_for("Boot Loader Entry as Good", 120, after=mark)      # systemd-bless-boot committed it
        vm.wait_for("root@hearth", 120, after=mark)
        text = shell(vm, "hearth update status", "generation 1 slot a")
        assert "running slot b" in text and "generation 2 slot b: good" in text, text
        # 2. signed by a key this device does not trust: refused, nothing changes
        text = shell(vm, "hearth update apply /dev/vdc", "Error:")
        assert "not signed by a key this device trusts" in text
        # 3. a bundle whose agent never comes up: three trial boots, then the bootloader returns to slot b
        shell(vm, "hearth update apply /dev/vdd --reboot", "boots on trial next time", 900)
        mark = len(vm.output())
        for _ in range(3):
            vm.wait_for("hearth.slot=a", 400, after=mark)
            vm.wait_for("Restarting system", 400, after=mark)
            mark = len(vm.output())
        vm.wait_for("hearth.slot=b", 400, after=mark)
        vm.wait_for("hearth: healthy", 300, after=mark)
        vm.wait_for("root@hearth", 120, after=mark)
        text = shell(vm, "hearth update status", "generation 2 slot b")
        assert "running slot b" in text and "slot a: bad" in text, text
        # 4. power cut while the root file system is being written: the good slot boots
        mark = len(vm.output())
        vm.send("hearth update apply /dev/vde --reboot")
        vm.wait_for("installing 0.0.2 into slot a", 120, after=mark)
        vm.kill()
        mark = len(vm.output())          # the console log goes on in the same file
        vm.start()
        vm.wait_for("hearth.slot=b", 400, after=mark)
        vm.wait_for("hearth: healthy", 400, after=mark)
        vm.wait_for("root@hearth", 120, after=mark)
        text = shell(vm, "hearth update status", "generation 2 slot b")
        assert "running slot b" in text and "slot b: good" in text, text
    finally:
        vm.close()
