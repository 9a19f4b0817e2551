"""Finding 16: `hearth flash` checked its target only against /proc/mounts and /proc/swaps, and opened it without
O_EXCL: a disk under dm-crypt, LVM, md or ZFS (holding the running root, say) passed, as its own partitions are
not what is mounted.

On 53df6de refuse_reason() read /proc/mounts and /proc/swaps only, and flash() opened the disk O_WRONLY. This
kernel cannot stage device-mapper or md, so holders are shown with a synthetic sysfs tree (the layout the kernel
gives /sys/class/block: a disk's directory with holders/ and one directory per partition, each with holders/);
the exclusive open is shown on real loop devices, held exclusively by another process, as dm, md, a mount or
ZFS hold the disks under them.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from edge.identity import Identity
from edge.provisioning.host.flash import FlashError, flash, holders_of, refuse_reason

pytestmark = pytest.mark.attack


def sysfs_tree(root, disk: str, holders: dict[str, list[str]], partitions=("1", "2")):
    """root/class/block/DISK as the kernel lays it out, with holders[dev] in each device's holders/."""
    base = root / "class" / "block" / disk
    (base / "holders").mkdir(parents=True)
    for p in partitions:
        part = base / f"{disk}p{p}"
        (part / "holders").mkdir(parents=True)
        (part / "partition").write_text(p + "\n")
    for dev, names in holders.items():
        where = base if dev == disk else base / dev
        for h in names:
            (where / "holders" / h).mkdir()       # a symlink to the holder's device directory on a real system
    return str(root)


def test_f16_holders_of_a_disk_and_its_partitions(tmp_path):
    sysfs = sysfs_tree(tmp_path / "sys", "sdz", {"sdzp2": ["dm-0"], "sdz": ["md127"]})
    assert holders_of("sdz", sysfs) == [("sdz", "md127"), ("sdzp2", "dm-0")]
    clean = sysfs_tree(tmp_path / "sys2", "sdz", {})
    assert holders_of("sdz", clean) == []


@pytest.fixture
def loop(tmp_path):
    """A real loop device over a 4 MiB file (detached afterwards, even on failure)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    if shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices here (losetup or /dev/loop-control missing)")
    backing = tmp_path / "disk.bin"
    backing.write_bytes(b"\xee" * (4 << 20))
    r = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, timeout=30)
    if r.returncode:
        pytest.skip(f"losetup could not attach a loop device: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev, backing
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=30)


def signed_image(tmp_path, *, debug=False):
    """A small raw image and its signed manifest, as `hearth image build` writes them."""
    from edge.images.build import sign_manifest
    import json
    image = tmp_path / "hearth-test-1.0.img"
    data = os.urandom(1 << 20)
    image.write_bytes(data)
    key = Identity.generate()
    key.save(str(tmp_path / "sign.key"))
    digest = hashlib.sha256(data).hexdigest()
    manifest = sign_manifest({"format": 1, "board": "x86-64", "version": "1.0", "partitions": [],
                              "image": {"file": image.name, "size": len(data), "sha256": digest},
                              "compressed": {"file": image.name + ".zst", "size": 0, "sha256": ""},
                              "debug_console": debug}, str(tmp_path / "sign.key"))
    (tmp_path / "hearth-test-1.0.manifest.json").write_text(json.dumps(manifest))
    return str(image), [key.node_id], data


def test_f16_disk_with_holders_refused_before_anything_is_written(tmp_path, loop):
    dev, backing = loop
    name = os.path.basename(dev)
    image, trusted, _ = signed_image(tmp_path)
    held = sysfs_tree(tmp_path / "sys", name, {f"{name}p2": ["dm-0"]})   # LVM or dm-crypt on its partition 2
    why = refuse_reason(dev, mounts="", swaps="Filename\n", sysfs=held)
    print(why)
    assert f"/dev/{name}p2 by dm-0" in why and "in use by the kernel" in why
    with pytest.raises(FlashError, match="in use by the kernel"):
        flash(image, dev, trusted=trusted, sysfs=held)
    assert backing.read_bytes() == b"\xee" * (4 << 20)


HOLD = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)
print("held", flush=True)
sys.stdin.read()
"""


def test_f16_flash_opens_exclusively_and_refuses_a_held_disk(tmp_path, loop):
    dev, backing = loop
    image, trusted, data = signed_image(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, dev], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # nothing in /proc/mounts or holders/ says so, but the kernel does: EBUSY on the exclusive open
        assert refuse_reason(dev) is None
        with pytest.raises(FlashError) as refused:
            flash(image, dev, trusted=trusted)
        print(refused.value)
        assert "is in use (the kernel refused an exclusive open" in str(refused.value)
        assert backing.read_bytes() == b"\xee" * (4 << 20)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # released: the same flash writes the disk and reads it back
    result = flash(image, dev, trusted=trusted)
    assert result["bytes"] == len(data) and result["debug_console"] is False
    with open(dev, "rb") as f:
        assert f.read(len(data)) == data

