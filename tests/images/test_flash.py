"""`hearth flash`: signed images only, verified after writing, a seed put on the boot partition, and no
mounted, system or swap disk ever written."""

import json
import os
import shutil
import subprocess

import pytest

from edge.identity import Identity
from edge.provisioning.host.flash import FlashError, flash, refuse_reason

from .conftest import VERSION, WHY_NOT, hearth

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
NAME = f"hearth-x86-64-{VERSION}"


def signer(out):
    return json.loads((out / f"{NAME}.manifest.json").read_text())["signed_by"]


def test_flash_to_file_with_seed(built, tmp_path):
    out, _ = built
    seed = tmp_path / "seed.toml"
    seed.write_text('[node]\nname = "attic"\n')
    target = tmp_path / "disk.img"
    r = hearth("flash", str(out / f"{NAME}.img.zst"), str(target), "--seed", str(seed), "--trust", signer(out),
               "--allow-debug")          # the test image is built with --debug-console
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "seed on the boot partition" in r.stdout
    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())
    boot = manifest["partitions"][0]
    got = subprocess.run(["mtype", "-i", f"{target}@@{boot['start']}", "::hearth-seed.toml"], capture_output=True,
                         env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert got == seed.read_bytes()
    root_a = manifest["partitions"][1]
    with open(target, "rb") as a, open(out / f"{NAME}.img", "rb") as b:
        a.seek(root_a["start"])
        b.seek(root_a["start"])
        for _ in range(16):
            assert a.read(1 << 20) == b.read(1 << 20)


def test_refuses_corrupt_unsigned_untrusted_and_tampered(built, tmp_path):
    out, _ = built
    trusted = [signer(out)]
    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())

    def copy(kind):
        d = tmp_path / kind
        d.mkdir()
        shutil.copy(out / f"{NAME}.manifest.json", d)
        os.link(out / f"{NAME}.img.zst", d / f"{NAME}.img.zst")
        return d

    d = tmp_path / "corrupt"
    d.mkdir()
    shutil.copy(out / f"{NAME}.manifest.json", d)
    shutil.copy(out / f"{NAME}.img.zst", d)
    with open(d / f"{NAME}.img.zst", "r+b") as f:
        f.seek(5 << 20)
        byte = f.read(1)
        f.seek(5 << 20)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(FlashError, match="does not match its manifest"):
        flash(str(d / f"{NAME}.img.zst"), str(tmp_path / "t1.img"), trusted=trusted)

    d = copy("unsigned")
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    (d / f"{NAME}.manifest.json").write_text(json.dumps(unsigned))
    with pytest.raises(FlashError, match="not signed"):
        flash(str(d / f"{NAME}.img.zst"), str(tmp_path / "t2.img"), trusted=trusted)

    d = copy("tampered")
    (d / f"{NAME}.manifest.json").write_text(json.dumps({**manifest, "version": "6.6.6"}))
    with pytest.raises(FlashError, match="does not match the manifest"):
        flash(str(d / f"{NAME}.img.zst"), str(tmp_path / "t3.img"), trusted=trusted)

    with pytest.raises(FlashError, match="not a key you trust"):
        flash(str(out / f"{NAME}.img.zst"), str(tmp_path / "t4.img"), trusted=[Identity.generate().node_id])
    with pytest.raises(FlashError, match="no manifest"):
        lone = tmp_path / "lone.img"
        lone.write_bytes(b"\0" * 4096)
        flash(str(lone), str(tmp_path / "t5.img"), trusted=trusted)
    for name in ("t1.img", "t2.img", "t3.img", "t4.img", "t5.img"):
        assert not (tmp_path / name).exists(), "nothing is written before the checks pass"


def disks():
    return [n for n in os.listdir("/sys/class/block") if not os.path.exists(f"/sys/class/block/{n}/partition")
            and os.path.exists(f"/dev/{n}")]


@pytest.mark.skipif(not disks(), reason="no block device to test against")
def test_refuses_mounted_system_and_swap_disks():
    dev = f"/dev/{disks()[0]}"
    assert "mounted at / (the running system)" in refuse_reason(dev, mounts=f"{dev} / ext4 rw 0 0\n", swaps="x\n")
    assert "mounted at /media/x" in refuse_reason(dev, mounts=f"{dev} /media/x vfat rw 0 0\n", swaps="x\n")
    assert "holds swap" in refuse_reason(dev, mounts="", swaps=f"Filename\n{dev} partition 1 0 -2\n")
    assert refuse_reason(dev, mounts="", swaps="Filename\n") is None
    # and the real one: whatever holds this machine's root is refused as it stands
    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    if root.startswith("/dev/") and os.path.exists(root):
        if not os.path.exists(f"/sys/class/block/{os.path.basename(root)}/partition"):
            assert "(the running system)" in refuse_reason(root)
