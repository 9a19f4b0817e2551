"""A/B updates in QEMU on the x86-64 test image: a signed bundle installs to the other slot, boots on trial and
is committed when healthy; a bundle signed by another key is refused; a bundle whose agent fails its health
check rolls back by itself; a VM killed during an install boots the good slot; with its loader entries removed
and damaged on the boot partition, the image boots the committed slot through the fallback entry.

The test image has a root shell on its serial console (built with --debug-console), which the test types into.
"""

import json
import os
import random
import subprocess
import time

import pytest

from edge.provisioning.slots import FALLBACK
from edge.images.qemu import VM

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
    from edge.images.disk import ext4_bytes
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


def esp(disk, manifest, *args, check=True):
    """mtools on the disk's boot partition (the VM is off): mdir, mcopy, mdel with ::paths."""
    start = next(p for p in manifest["partitions"] if p["name"] == "boot")["start"]
    tool, *rest = args
    return subprocess.run([tool, "-i", f"{disk}@@{start}", *rest], check=check, capture_output=True, text=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def boots_slot_b(vm, stage):
    mark = len(vm.output())
    vm.wait_for("hearth.slot=b", 400, after=mark, stage=f"{stage}: slot b's kernel")
    vm.wait_for("hearth: healthy", 400, after=mark, stage=f"{stage}: slot b healthy")
    vm.wait_for("root@hearth", 120, after=mark, stage=f"{stage}: the console's shell")


def test_update_commit_refuse_rollback_power_cut_and_lost_entries(built, bundles, tmp_path, console_log):
    """Every guest reboot here is a power cycle by the harness (QEMU exits at the reset and starts again on the
    same disk and firmware variables); a failure names the stage it waited for and the console log it kept."""
    out, _ = built
    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())
    disk = str(tmp_path / "disk.img")
    subprocess.run(["cp", "--sparse=always", str(out / f"{NAME}.img"), disk], check=True)
    drives = [bundles["good"], bundles["foreign"], bundles["broken"], bundles["good"]]
    vm = VM(disk, drives=drives, console_log=console_log)
    t0 = time.monotonic()
    stages = {}

    def done(stage):
        stages[stage] = round(time.monotonic() - t0)
    try:
        vm.start()
        vm.wait_for("edge.agent: node hn", 400, stage="0. first boot: the agent serves")
        vm.wait_for("root@hearth", 120)
        text = shell(vm, "hearth update status", "slot a: fallback")
        assert "generation 1 slot a: good" in text and "hearth-0-committed.conf slot a: fallback" in text, text
        done("0. first boot")
        # 1. a signed bundle: installed to slot b, boots on trial, committed when healthy
        shell(vm, "hearth update apply /dev/vdb --reboot", "boots on trial next time", 900,
              stage="1. install the good bundle")
        mark = len(vm.output())
        vm.wait_for("hearth.slot=b", 300, after=mark, stage="1. slot b boots on trial")
        vm.wait_for("hearth: healthy", 300, after=mark, stage="1. slot b healthy")
        vm.wait_for("Boot Loader Entry as Good", 120, after=mark, stage="1. systemd-bless-boot commits slot b")
        vm.wait_for("root@hearth", 120, after=mark)
        text = shell(vm, "hearth update status", "slot b: fallback")
        assert "running slot b" in text and "generation 2 slot b: good" in text, text
        assert "hearth: slot b committed (the fallback entry" in vm.output()[mark:]
        done("1. good bundle committed")
        # 2. signed by a key this device does not trust: refused, nothing changes
        text = shell(vm, "hearth update apply /dev/vdc", "Error:", stage="2. foreign bundle refused")
        assert "not signed by a key this device trusts" in text
        # 3. a bundle whose agent never comes up: three trial boots, then the bootloader returns to slot b
        shell(vm, "hearth update apply /dev/vdd --reboot", "boots on trial next time", 900,
              stage="3. install the broken bundle")
        mark = len(vm.output())
        for trial in range(1, 4):     # three boots of slot a, each counted from where the one before it ended
            mark = vm.wait_at("hearth.slot=a", 400, after=mark, stage=f"3. broken slot a, trial {trial} of 3: boots")
            mark = vm.wait_at("Restarting system", 400, after=mark,
                              stage=f"3. broken slot a, trial {trial} of 3: fails")
        boots_slot_b(vm, "3. rolled back")
        text = shell(vm, "hearth update status", "slot b: fallback")
        assert "running slot b" in text and "slot a: bad" in text, text
        done("3. broken bundle rolled back")
        # 4. power cut while the root file system is being written: the good slot boots
        mark = len(vm.output())
        vm.send("hearth update apply /dev/vde --reboot")
        vm.wait_for("installing 0.0.2 into slot a", 120, after=mark, stage="4. install, cut mid-way")
        vm.kill()
        vm.start()
        boots_slot_b(vm, "4. after the power cut")
        text = shell(vm, "hearth update status", "slot b: fallback")
        assert "running slot b" in text and "slot b: good" in text, text
        done("4. power cut")
        # 5. the loader entries damaged on the boot partition (the VM off): slot b's own entry removed, junk in
        # entries named as a newer slot b and as a trial of slot a; the fallback entry boots the committed slot b
        vm.kill()
        for name in esp(disk, manifest, "mdir", "-b", "::loader/entries/").stdout.split():
            if not name.endswith("/" + FALLBACK):
                esp(disk, manifest, "mdel", name)
        junk = tmp_path / "junk.conf"
        junk.write_bytes(random.Random(14).randbytes(700))
        for name in ("hearth-3-b.conf", "hearth-9-a+3.conf"):
            esp(disk, manifest, "mcopy", str(junk), f"::loader/entries/{name}")
        left = sorted(os.path.basename(n)
                      for n in esp(disk, manifest, "mdir", "-b", "::loader/entries/").stdout.split())
        assert left == [FALLBACK, "hearth-3-b.conf", "hearth-9-a+3.conf"], left
        vm.start()
        boots_slot_b(vm, "5. entries removed and damaged")
        shell(vm, "hearth update status --json", '"booted_entry": "hearth-0-committed.conf"',
              stage="5. booted through the fallback entry")
        done("5. entries removed and damaged: the fallback boots slot b")
        # every guest reboot went through the harness: 1 (update) + 3 (trials) + 1 (rollback), at least
        assert vm.power_cycles >= 5, vm.power_cycles
    finally:
        vm.close()
        print(f"stages (s since start): {stages}; power cycles by the harness: {vm.power_cycles}; "
              f"console log: {console_log}")
