"""The arm64 images: qemu-arm64 (generic UEFI) boots in qemu-system-aarch64 to a serving agent; rpi4 builds the
Raspberry Pi layout and boots on QEMU's raspi3b machine (QEMU has no Pi 4 model) through the first-boot service.

Both are built here from Debian's arm64 packages under qemu-user (binfmt_misc), with the agent's native modules
cross-compiled and checked inside the target. Software emulation throughout (there is no arm64 KVM on x86).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import urllib.request

import pytest

from edge.images.qemu import VM, free_port
from edge.images.wheels import CROSS

from tests.images import builds

from .conftest import VERSION, WHY_NOT, hearth

ARM_WHY_NOT = WHY_NOT or next((f"missing {t}" for t in ("qemu-system-aarch64", "qemu-aarch64-static",
                                                         CROSS["aarch64"]["cc"]) if shutil.which(t) is None), None)
if ARM_WHY_NOT is None and not os.path.exists("/usr/share/AAVMF/AAVMF_CODE.fd"):
    ARM_WHY_NOT = "no AAVMF firmware (Debian: qemu-efi-aarch64)"
pytestmark = pytest.mark.skipif(ARM_WHY_NOT is not None, reason=ARM_WHY_NOT or "")


BOARDS = ("qemu-arm64", "rpi4")


@pytest.fixture(scope="module")
def arm_builds():
    """Both arm64 images, built at the same time (tests/images/builds.py starts them in the background when
    collection ends): each build spends its minutes in one emulated process (dpkg and maintainer scripts under
    qemu-user), so two of them share this machine's two cores."""
    return builds.SESSION


def build(arm_builds, board):
    out, _ = arm_builds.result(board)
    out = pathlib.Path(out)
    manifest = json.loads((out / f"hearth-{board}-{VERSION}.manifest.json").read_text())
    return out / f"hearth-{board}-{VERSION}.img", manifest


def test_qemu_arm64_image_boots_to_a_serving_agent(arm_builds, tmp_path, console_log):
    image, manifest = build(arm_builds, "qemu-arm64")
    assert manifest["arch"] == "arm64" and manifest["table"] == "gpt"
    assert "linux-image-arm64" in manifest["packages"] and "hearth-edge" in manifest["python"]
    port = free_port()
    vm = VM(str(image), "aarch64", forwards={4800: port}, snapshot=True, console_log=console_log).start()
    try:
        vm.wait_for("Linux version", 300)
        assert "aarch64" in vm.output() or "arm64" in vm.output()
        vm.wait_for("hearth: first boot done", 600)
        assert "seed applied (node_name, quota, upload_limit; secrets removed: network.wifi_psk)" in vm.output()
        vm.wait_for("edge.agent: node hn", 600)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/streams", timeout=60) as r:
            assert r.status == 200 and json.loads(r.read()) == []
    finally:
        vm.close()
    image.unlink()


def mcopy(image, offset, inside, dest):
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-o", "-i", f"{image}@@{offset}", f"::{inside}", str(dest)], check=True, env=env)


def test_rpi4_image_has_the_pi_layout_and_boots_on_raspi3b_to_first_boot(arm_builds, tmp_path, console_log):
    image, manifest = build(arm_builds, "rpi4")
    assert manifest["table"] == "mbr" and manifest["bootloader"] == "raspi-firmware"
    assert "raspi-firmware" in manifest["packages"]
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "dos" and [p["type"] for p in table["partitions"]] == ["c", "83", "83", "83"]
    boot = manifest["partitions"][0]["start"]
    for name in ("config.txt", "start4.elf", "fixup4.dat", "a/cmdline.txt", "a/bcm2711-rpi-4-b.dtb", "a/vmlinuz",
                 "a/initrd.img", "a/bcm2837-rpi-3-b.dtb"):
        mcopy(image, boot, name, tmp_path / os.path.basename(name))
    assert "os_prefix=a/" in (tmp_path / "config.txt").read_text()
    cmdline = (tmp_path / "cmdline.txt").read_text().strip()
    disk_id = table["id"].removeprefix("0x")
    assert f"root=PARTUUID={disk_id}-02" in cmdline and "hearth.slot=a" in cmdline
    # QEMU's raspi3b: its PL011 is the console (a Pi 4 uses the mini UART, ttyS1), and the SD card model needs a
    # power-of-two size: the image goes on a 4 GiB card, and first boot grows the data partition into the rest
    card = tmp_path / "sd.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(card)], check=True)
    with open(card, "r+b") as f:
        f.truncate(4 << 30)
    append = re.sub(r"console=ttyS1,\d+", "console=ttyAMA0,115200", cmdline)
    vm = VM(str(card), "raspi3b", direct={"kernel": str(tmp_path / "vmlinuz"), "initrd": str(tmp_path / "initrd.img"),
                                          "dtb": str(tmp_path / "bcm2837-rpi-3-b.dtb"), "append": append},
            console_log=console_log).start()
    try:
        vm.wait_for("Linux version", 300)
        vm.wait_for("Hearth first boot", 900)           # systemd starting hearth-firstboot.service
        vm.wait_for("hearth: first boot done", 600)
        assert "seed applied (node_name, quota, upload_limit; secrets removed: network.wifi_psk)" in vm.output()
        assert "data partition grown from 256 MiB to" in vm.output()
    finally:
        vm.close()
    # an update bundle from this image carries the slot's device trees for the Pi firmware
    out = image.parent
    r = hearth("update", "bundle", str(image), "-o", str(tmp_path / "u.bundle"), "--key", str(out / "sign.key"),
               "--version", "0.0.2-test")
    assert r.returncode == 0, r.stderr
    from edge.identity import Identity
    from edge.provisioning.device.payload import read_bundle
    manifest, tar = read_bundle(str(tmp_path / "u.bundle"), [Identity.load(str(out / "sign.key")).node_id])
    tar.close()
    assert manifest["board"] == "rpi4" and "devicetrees.tar" in manifest["files"]
    import tarfile
    with tarfile.open(tmp_path / "u.bundle") as t:
        dtbs = tarfile.open(fileobj=t.extractfile("devicetrees.tar")).getnames()
    assert "bcm2711-rpi-4-b.dtb" in dtbs and "bcm2837-rpi-3-b.dtb" in dtbs
    image.unlink()
