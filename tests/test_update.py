"""A/B install logic on files standing in for the partitions: signature first, slot unbootable while written,
entry last; a power cut (an exception) at any step leaves the running slot the one that boots."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from edge.identity import Identity
from edge.provisioning.device.bootloader import entries
from edge.provisioning.device.update import apply
from edge.provisioning.slots import UpdateError

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")

ENTRY_A = ("title Hearth (slot a)\nlinux /a/vmlinuz\ninitrd /a/initrd.img\noptions root=PARTLABEL=root-a ro "
           "rootwait console=tty0 console=ttyS0,115200 systemd.show_status=1 hearth.slot=a\n")
ROOT = b"R" * 300_000 + b"\0" * 100_000


def make(tmp_path, key, *, root=ROOT, version="2.0", sign_with=None, corrupt_root=False, name="b.bundle",
         board="x86-64", extra=None, root_hash=True):
    """A signed bundle; root_hash=False makes one as bundles were before they carried the root's hash."""
    comp = subprocess.run(["zstd", "-q", "-c"], input=root, capture_output=True, check=True).stdout
    files = {"root.img.zst": comp, "vmlinuz": b"kernel-" + version.encode(), "initrd.img": b"initrd-" + version.encode()}
    manifest = {"format": 1, "board": board, "version": version, "root_size": len(root),
                **({"root_sha256": hashlib.sha256(root).hexdigest()} if root_hash else {}),
                "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
                **(extra or {})}
    body = json.dumps(manifest).encode()
    sig = (sign_with or key).sign(body)
    if corrupt_root:
        files["root.img.zst"] = bytearray(comp)
        files["root.img.zst"][len(comp) // 2] ^= 1
        files["root.img.zst"] = bytes(files["root.img.zst"])
    return write_tar(tmp_path / name, [("manifest.json", body), ("manifest.sig", sig), *files.items()])


def write_tar(target, members) -> str:
    """A tar of (name, bytes) in order, at a path or into a file object; returns the path."""
    kw = {"fileobj": target} if hasattr(target, "write") else {"name": target}
    with tarfile.open(mode="w", **kw) as tar:
        for n, d in members:
            info = tarfile.TarInfo(n)
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
    return str(target)


class PowerCut(Exception):
    pass


def power_cut():
    """Stands in for the power going off at the step where an install calls it."""
    raise PowerCut


@pytest.fixture
def device(tmp_path):
    boot = tmp_path / "efi"
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / "loader" / "entries" / "hearth-1-a.conf").write_text(ENTRY_A)
    slots = {s: tmp_path / f"root-{s}" for s in "ab"}
    for p in slots.values():
        p.write_bytes(b"\xff" * 500_000)
    image = tmp_path / "image.json"               # what the running image's build recorded (/etc/hearth/image.json)
    image.write_text(json.dumps({"board": "x86-64", "version": "1.0", "debug_console": False}))
    return {"boot": str(boot), "device_for": lambda s: str(slots[s]), "cmdline": "ro hearth.slot=a quiet",
            "slots": slots, "image": str(image)}


def install(dev, path, key, **kw):
    return apply(path, boot=dev["boot"], trusted=[key.node_id], device_for=dev["device_for"], cmdline=dev["cmdline"],
                 log=lambda m: None, image_info=dev["image"], **kw)


def test_installs_to_the_other_slot_with_a_trial_entry_last(tmp_path, device):
    key = Identity.generate()
    result = install(device, make(tmp_path, key), key)
    assert result == {"slot": "b", "version": "2.0", "entry": "hearth-2-b+3.conf"}
    assert device["slots"]["b"].read_bytes()[:len(ROOT)] == ROOT
    assert (tmp_path / "efi" / "b" / "vmlinuz").read_bytes() == b"kernel-2.0"
    text = (tmp_path / "efi" / "loader" / "entries" / "hearth-2-b+3.conf").read_text()
    assert "root=PARTLABEL=root-b" in text and "hearth.slot=b" in text and "/b/initrd.img" in text
    assert [(e["generation"], e["slot"], e["state"]) for e in entries(device["boot"])] == [(2, "b", "trial"),
                                                                                         (1, "a", "good")]


def test_a_bundle_without_the_roots_hash_installs_and_a_wrong_or_malformed_one_is_refused(tmp_path, device):
    key = Identity.generate()
    assert install(device, make(tmp_path, key, root_hash=False), key)["slot"] == "b"     # an older bundle
    assert device["slots"]["b"].read_bytes()[:len(ROOT)] == ROOT
    shutil.rmtree(tmp_path / "efi" / "b")
    for e in entries(device["boot"]):
        if e["slot"] == "b":
            os.unlink(tmp_path / "efi" / "loader" / "entries" / e["file"])
    # signed, but the hash is not the root's (a bundle made wrong): written, read back, found out, never armed
    wrong = make(tmp_path, key, name="w.bundle", extra={"root_sha256": hashlib.sha256(b"another root").hexdigest()})
    with pytest.raises(UpdateError, match="does not read back as the signed root file system"):
        install(device, wrong, key)
    assert [e["slot"] for e in entries(device["boot"])] == ["a"]
    with pytest.raises(UpdateError, match="not one this version understands"):
        install(device, make(tmp_path, key, name="m.bundle", extra={"root_sha256": "not hex"}), key)


def test_a_root_larger_than_the_slot_is_refused_before_anything_is_written(tmp_path, device):
    key = Identity.generate()
    before = device["slots"]["b"].read_bytes()
    big = b"R" * (len(before) + 4096)
    with pytest.raises(UpdateError, match=f"is {len(big)} bytes and slot b's partition .* holds {len(before)}"):
        install(device, make(tmp_path, key, root=big), key)
    assert device["slots"]["b"].read_bytes() == before
    assert [e["slot"] for e in entries(device["boot"])] == ["a"]


def test_refuses_unsigned_foreign_and_corrupt_bundles_writing_nothing(tmp_path, device):
    key, other = Identity.generate(), Identity.generate()
    before = device["slots"]["b"].read_bytes()
    with pytest.raises(UpdateError, match="not signed by a key this device trusts"):
        install(device, make(tmp_path, key, sign_with=other), key)
    assert device["slots"]["b"].read_bytes() == before
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(UpdateError, match="not a readable bundle|not a Hearth bundle"):
        install(device, str(garbage), key)
    with pytest.raises(UpdateError, match="does not match its signed hash"):
        install(device, make(tmp_path, key, corrupt_root=True, name="c.bundle"), key)
    # the whole bundle is checked before anything is written: slot b and the entries are as they were
    assert device["slots"]["b"].read_bytes() == before
    assert [e["slot"] for e in entries(device["boot"])] == ["a"]
    with pytest.raises(UpdateError, match="accepts no bundle"):
        apply(make(tmp_path, key, name="d.bundle"), boot=device["boot"], trusted=[], cmdline=device["cmdline"])


def test_power_cut_mid_install_leaves_the_running_slot_booting(tmp_path, device):
    key = Identity.generate()
    install(device, make(tmp_path, key, version="2.0"), key)           # slot b now on trial (generation 2)
    device["cmdline"] = "hearth.slot=b"                                 # it booted and was committed
    edir = tmp_path / "efi" / "loader" / "entries"
    os.rename(edir / "hearth-2-b+3.conf", edir / "hearth-2-b.conf")
    with pytest.raises(PowerCut):
        install(device, make(tmp_path, key, version="3.0", name="e.bundle"), key, pause_after_root=power_cut)
    # slot a's old entry went first, the new one was never written: only the good slot b can boot
    assert [(e["slot"], e["state"]) for e in entries(device["boot"])] == [("b", "good")]
    result = install(device, make(tmp_path, key, version="3.0", name="f.bundle"), key)
    assert result["entry"] == "hearth-3-a+3.conf"


def commit_slot(device, slot):
    """What a healthy trial boot of `slot` does: systemd-bless-boot drops the counter, hearth-health commits."""
    from edge.provisioning.device.update import commit
    edir = os.path.join(device["boot"], "loader", "entries")
    for e in entries(device["boot"]):
        if e["slot"] == slot and e["state"] == "trial":
            os.rename(os.path.join(edir, e["file"]), os.path.join(edir, f"hearth-{e['generation']}-{slot}.conf"))
    device["cmdline"] = f"ro hearth.slot={slot}"
    commit(device["boot"], device["cmdline"], log=lambda m: None)


def test_version_floor_rises_on_commit_and_refuses_older_unless_a_signed_downgrade(tmp_path, device):
    from edge.provisioning.device.versions import read_versions
    key = Identity.generate()
    # a fresh image: the floor is its own version (1.0), so 0.9 is refused and nothing is written
    before = device["slots"]["b"].read_bytes()
    with pytest.raises(UpdateError, match=r"older than this device's version floor 1\.0.*--downgrade-from 1\.0"):
        install(device, make(tmp_path, key, version="0.9", name="old.bundle"), key)
    assert device["slots"]["b"].read_bytes() == before
    install(device, make(tmp_path, key, version="2.10"), key)
    assert read_versions(device["boot"])["slots"] == {"b": "2.10"}
    commit_slot(device, "b")
    assert read_versions(device["boot"]) == {"floor": "2.10", "committed": "b", "slots": {"b": "2.10"}}
    from edge.provisioning.device.update import status
    assert status(device["boot"], device["cmdline"])["version_floor"] == "2.10"
    # 2.9 < 2.10 (numbers, not text): refused; so is a downgrade signed for devices at 2.0 (a replay)
    with pytest.raises(UpdateError, match=r"version floor 2\.10.*allows no downgrade"):
        install(device, make(tmp_path, key, version="2.9", name="c.bundle"), key)
    with pytest.raises(UpdateError, match=r"allows a downgrade only from 2\.0 or older"):
        install(device, make(tmp_path, key, version="1.5", name="d.bundle", extra={"downgrade_from": "2.0"}), key)
    assert [(e["slot"], e["state"]) for e in entries(device["boot"])] == [("b", "good"), ("a", "good")]
    # the same version again, and a downgrade signed for this floor, install; committing it lowers the floor
    assert install(device, make(tmp_path, key, version="2.10.0", name="e.bundle"), key)["slot"] == "a"
    result = install(device, make(tmp_path, key, version="1.5", name="f.bundle", extra={"downgrade_from": "2.10"}),
                     key)
    assert result["slot"] == "a" and device["slots"]["a"].read_bytes()[:len(ROOT)] == ROOT
    commit_slot(device, "a")
    assert read_versions(device["boot"])["floor"] == "1.5"


def test_another_boards_bundle_and_a_debug_bundle_are_refused(tmp_path, device):
    key = Identity.generate()
    before = device["slots"]["b"].read_bytes()
    with pytest.raises(UpdateError, match="for board rpi4; this device is x86-64"):
        install(device, make(tmp_path, key, board="rpi4"), key)
    with pytest.raises(UpdateError, match="--debug-console.*--allow-debug"):
        install(device, make(tmp_path, key, name="dbg.bundle", extra={"debug_console": True}), key)
    assert device["slots"]["b"].read_bytes() == before and [e["slot"] for e in entries(device["boot"])] == ["a"]
    assert install(device, make(tmp_path, key, name="dbg2.bundle", extra={"debug_console": True}), key,
                   allow_debug=True)["slot"] == "b"
    # a device without the build's record of its board takes no bundle
    os.unlink(device["image"])
    with pytest.raises(UpdateError, match="does not record its board"):
        install(device, make(tmp_path, key, name="x.bundle"), key)


# Raspberry Pi: config.txt names the committed slot, tryboot.txt the one on trial ---------------------------

CONFIG = "[all]\narm_64bit=1\nos_prefix=a/\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
CMDLINE_A = "console=tty0 console=ttyS1,115200 root=PARTUUID=5c0f2c4e-02 ro rootwait hearth.slot=a\n"


def make_pi(tmp_path, key, *, version="2.0", name="pi.bundle", dtbs=None):
    """A bundle as make_bundle writes it for a Pi image: the device trees travel in devicetrees.tar."""
    path = make(tmp_path, key, version=version, name="base-" + name)
    dtbs = {"bcm2711-rpi-4-b.dtb": b"\xd0\x0d\xfe\xed" + version.encode()} if dtbs is None else dtbs
    buf = io.BytesIO()
    write_tar(buf, dtbs.items())
    with tarfile.open(path) as src:
        members = {m.name: src.extractfile(m).read() for m in src.getmembers()}
    manifest = json.loads(members["manifest.json"])
    manifest["board"] = "rpi4"
    manifest["files"]["devicetrees.tar"] = {"size": len(buf.getvalue()),
                                            "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    body = json.dumps(manifest).encode()
    return write_tar(tmp_path / name, [("manifest.json", body), ("manifest.sig", key.sign(body)),
                                       *[(n, members[n]) for n in ("root.img.zst", "vmlinuz", "initrd.img")],
                                       ("devicetrees.tar", buf.getvalue())])


@pytest.fixture
def pi(tmp_path):
    boot = tmp_path / "firmware"
    (boot / "a").mkdir(parents=True)
    (boot / "config.txt").write_text(CONFIG)
    (boot / "a" / "cmdline.txt").write_text(CMDLINE_A)
    slots = {s: tmp_path / f"root-{s}" for s in "ab"}
    for p in slots.values():
        p.write_bytes(b"\xff" * 500_000)
    image = tmp_path / "image.json"
    image.write_text(json.dumps({"board": "rpi4", "version": "1.0", "debug_console": False}))
    return {"boot": str(boot), "device_for": lambda s: str(slots[s]), "cmdline": CMDLINE_A, "slots": slots,
            "image": str(image)}


def test_pi_install_writes_the_slot_then_tryboot_and_health_commits(tmp_path, pi):
    from edge.provisioning.device.update import commit, status
    from edge.provisioning.slots import slot_device
    assert slot_device("b", CMDLINE_A) == "/dev/disk/by-partuuid/5c0f2c4e-03"
    key = Identity.generate()
    result = install(pi, make_pi(tmp_path, key), key)
    assert result == {"slot": "b", "version": "2.0", "entry": "tryboot.txt"}
    boot = tmp_path / "firmware"
    assert pi["slots"]["b"].read_bytes()[:len(ROOT)] == ROOT
    assert (boot / "b" / "vmlinuz").read_bytes() == b"kernel-2.0"
    assert (boot / "b" / "bcm2711-rpi-4-b.dtb").read_bytes().endswith(b"2.0")
    assert (boot / "b" / "cmdline.txt").read_text() == CMDLINE_A.replace("-02", "-03").replace("slot=a", "slot=b")
    assert "os_prefix=b/" in (boot / "tryboot.txt").read_text()
    assert (boot / "config.txt").read_text() == CONFIG            # an ordinary boot still boots slot a
    assert [(e["slot"], e["state"]) for e in status(str(boot), CMDLINE_A)["entries"]] == [("b", "trial"),
                                                                                         ("a", "good")]
    # the trial boot ran slot b and the agent was healthy: config.txt now boots b, tryboot.txt is gone
    cmdline_b = (boot / "b" / "cmdline.txt").read_text()
    assert commit(str(boot), cmdline_b, log=lambda m: None) == "b"
    assert "os_prefix=b/" in (boot / "config.txt").read_text() and not (boot / "tryboot.txt").exists()
    assert commit(str(boot), cmdline_b, log=lambda m: None) is None       # nothing more to do


def test_pi_refuses_an_update_while_on_trial_and_a_power_cut_keeps_slot_a(tmp_path, pi):
    key = Identity.generate()
    install(pi, make_pi(tmp_path, key), key)
    boot = tmp_path / "firmware"
    on_trial = dict(pi, cmdline=(boot / "b" / "cmdline.txt").read_text())
    with pytest.raises(UpdateError, match="on trial and not committed"):
        install(on_trial, make_pi(tmp_path, key, version="3.0", name="p3.bundle"), key)
    # a second install of slot b: tryboot.txt goes first, so a cut anywhere after leaves only slot a bootable
    with pytest.raises(PowerCut):
        install(pi, make_pi(tmp_path, key, version="4.0", name="p4.bundle"), key, pause_after_root=power_cut)
    assert not (boot / "tryboot.txt").exists() and (boot / "config.txt").read_text() == CONFIG


def test_pi_bundle_with_a_hostile_devicetree_member_is_refused(tmp_path, pi):
    key = Identity.generate()
    with pytest.raises(UpdateError, match="not a device tree"):
        install(pi, make_pi(tmp_path, key, dtbs={"../../etc/passwd": b"x"}), key)
    assert not (tmp_path / "firmware" / "tryboot.txt").exists()


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("mkfs.vfat", "mcopy", "mkfs.ext4", "sfdisk")),
                    reason="needs dosfstools, mtools, e2fsprogs and fdisk")
def test_bundle_made_from_a_pi_image_installs_on_a_pi(tmp_path, pi):
    """make_bundle on a small image laid out as the rpi4 build lays it out (MBR, slot a's files on FAT), then
    installed: the device trees travel in the bundle."""
    from dataclasses import asdict

    from edge.images import disk
    from edge.provisioning.host.bundle import make_bundle
    for name, data in (("vmlinuz", b"kernel-9"), ("initrd.img", b"initrd-9"), ("dt.dtb", b"\xd0\x0d\xfe\xed9")):
        (tmp_path / name).write_bytes(data)
    parts, total = disk.layout(100, 32, 16)
    disk.fat_image(str(tmp_path / "boot.fs"), parts[0].size, {
        "a/vmlinuz": str(tmp_path / "vmlinuz"), "a/initrd.img": str(tmp_path / "initrd.img"),
        "a/bcm2711-rpi-4-b.dtb": str(tmp_path / "dt.dtb")}, "12345678", 0)
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    disk_id = "5c0f2c4e-7d0b-4e43-9b3a-6b0d3f1e2a11"
    disk.ext4_image(str(tmp_path / "root.fs"), parts[1].size, str(tmp_path / "tree"), "root-a", disk_id, 0)
    image = tmp_path / "hearth-rpi4-9.img"
    disk.assemble(str(image), parts, total, disk.sfdisk_script(parts, "mbr", "aarch64", disk_id),
                  {"boot": str(tmp_path / "boot.fs"), "root-a": str(tmp_path / "root.fs")})
    (tmp_path / "image.json").write_text(json.dumps({"board": "rpi4", "bootloader": "raspi-firmware",
                                                     "partitions": [asdict(p) for p in parts]}))
    key = Identity.generate()
    key.save(str(tmp_path / "sign.key"))
    bundle = tmp_path / "9.bundle"
    manifest = make_bundle(str(image), str(tmp_path / "image.json"), str(bundle), version="9",
                           key_path=str(tmp_path / "sign.key"))
    assert set(manifest["files"]) == {"root.img.zst", "vmlinuz", "initrd.img", "devicetrees.tar"}
    with tarfile.open(bundle) as t:
        assert {(m.uid, m.mtime, m.uname) for m in t.getmembers()} == {(0, 0, "root")}
    pi["slots"]["b"].write_bytes(b"\xff" * (parts[1].size + 4096))
    assert install(pi, str(bundle), key)["slot"] == "b"
    boot = tmp_path / "firmware"
    assert (boot / "b" / "vmlinuz").read_bytes() == b"kernel-9"
    assert (boot / "b" / "bcm2711-rpi-4-b.dtb").read_bytes() == b"\xd0\x0d\xfe\xed9"
    assert "os_prefix=b/" in (boot / "tryboot.txt").read_text()


def test_the_reboot_that_tries_the_new_slot_is_the_boot_loaders(tmp_path):
    from edge.provisioning.device.bootloader import loader_for
    uefi = tmp_path / "efi"
    uefi.mkdir()
    assert loader_for(str(uefi)).reboot_command() == ["systemctl", "reboot"]
    pi = tmp_path / "firmware"
    pi.mkdir()
    (pi / "config.txt").write_text("[all]\n")
    # the Pi firmware boots tryboot.txt's slot only on a tryboot reboot
    assert loader_for(str(pi)).reboot_command() == ["systemctl", "reboot", "0 tryboot"]
