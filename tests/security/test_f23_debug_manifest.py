"""Finding 23 (the part closed here): the `--debug-console` flag (root autologin on the serial console) was not
recorded in the signed manifest, so nothing told a debug image from a production one.

On 53df6de build() wrote the autologin drop-in into the root but left the manifest without it. Now the image's
signed manifest carries "debug_console", the image records it in /etc/hearth/image.json, and update bundles
carry it in their signed manifest: `hearth flash` writes a debug image only with --allow-debug, and `hearth
update apply` installs a debug bundle on a device that is not a debug image only with --allow-debug. (Wheel
hashes for the image build are still open: docs/security.md.)
"""

import json
import shutil

import pytest

from edge.identity import Identity
from edge.provisioning.device.update import apply
from edge.provisioning.host.bundle import make_bundle
from edge.provisioning.host.flash import FlashError, flash
from edge.provisioning.slots import UpdateError
from tests.security.test_f16_flash import signed_image
from tests.test_update import device, make  # noqa: F401  (device: the fixture of EFI and slots)

pytestmark = pytest.mark.attack


def test_f23_debug_image_flashed_only_with_allow_debug(tmp_path):
    image, trusted, data = signed_image(tmp_path, debug=True)
    target = tmp_path / "out.img"
    with pytest.raises(FlashError, match="--debug-console.*--allow-debug"):
        flash(image, str(target), trusted=trusted)
    assert not target.exists()
    # the flag is signed: cleared after signing, the manifest no longer verifies
    manifest_file = tmp_path / "hearth-test-1.0.manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "debug_console": False}))
    with pytest.raises(FlashError, match="does not match the manifest"):
        flash(image, str(target), trusted=trusted)
    manifest_file.write_text(json.dumps(manifest))
    assert flash(image, str(target), trusted=trusted, allow_debug=True)["debug_console"] is True
    assert target.read_bytes() == data


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
@pytest.mark.parametrize("device_is_debug", [False, True])
def test_f23_debug_bundle_installs_only_on_a_debug_device_or_with_allow_debug(tmp_path, device,  # noqa: F811
                                                                               device_is_debug):
    boot, slots, info = device["boot"], device["slots"], device["image"]
    with open(info, "w") as f:
        json.dump({"board": "x86-64", "version": "1.0", "debug_console": device_is_debug}, f)
    key = Identity.generate()
    bundle = make(tmp_path, key, extra={"debug_console": True})

    def install(**kw):
        return apply(bundle, boot=boot, trusted=[key.node_id], device_for=device["device_for"],
                     cmdline="hearth.slot=a", log=lambda m: None, image_info=info, **kw)
    if device_is_debug:
        assert install()["slot"] == "b"
        return
    with pytest.raises(UpdateError, match="--debug-console.*--allow-debug"):
        install()
    assert slots["b"].read_bytes() == b"\xff" * 500_000
    assert install(allow_debug=True)["slot"] == "b"


def test_f23_bundle_manifest_carries_the_images_debug_flag(tmp_path):
    """make_bundle copies the image manifest's flag into the bundle's signed manifest."""
    if any(shutil.which(t) is None for t in ("zstd", "mcopy", "mkfs.vfat", "sfdisk", "mkfs.ext4")):
        pytest.skip("needs zstd, mtools, dosfstools, fdisk and e2fsprogs")
    from dataclasses import asdict

    from edge.images import disk
    for name in ("vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(name.encode())
    parts, total = disk.layout(100, 32, 16)
    disk.fat_image(str(tmp_path / "boot.fs"), parts[0].size, {"a/vmlinuz": str(tmp_path / "vmlinuz"),
                                                              "a/initrd.img": str(tmp_path / "initrd.img")},
                   "12345678", 0)
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    disk.ext4_image(str(tmp_path / "root.fs"), parts[1].size, str(tmp_path / "tree"), "root-a",
                    "5c0f2c4e-7d0b-4e43-9b3a-6b0d3f1e2a11", 0)
    image = tmp_path / "hearth-x86-64-1.img"
    disk.assemble(str(image), parts, total, disk.sfdisk_script(parts, "gpt", "x86_64",
                                                               "5c0f2c4e-7d0b-4e43-9b3a-6b0d3f1e2a11"),
                  {"boot": str(tmp_path / "boot.fs"), "root-a": str(tmp_path / "root.fs")})
    key = Identity.generate()
    key.save(str(tmp_path / "sign.key"))
    for debug in (True, False):
        (tmp_path / "image.json").write_text(json.dumps({"board": "x86-64", "bootloader": "systemd-boot",
                                                         "debug_console": debug,
                                                         "partitions": [asdict(p) for p in parts]}))
        m = make_bundle(str(image), str(tmp_path / "image.json"), str(tmp_path / f"{debug}.bundle"), version="2",
                        key_path=str(tmp_path / "sign.key"))
        assert m["debug_console"] is debug


# the wheels: every runtime dependency pinned in images/requirements.lock with hashes, installed with them --

def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [sha256, ...])} from images/requirements.lock (pip-compile's format)."""
    import re

    from edge.images.wheels import LOCK
    out = {}
    with open(LOCK) as f:
        text = f.read()
    for block in re.split(r"\n(?=\S)", text):
        line = block.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        assert m, f"a lock line without an exact pin: {line.splitlines()[0]}"
        out[m.group(1).lower().replace("_", "-")] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def test_f23_lock_pins_every_dependency_with_hashes():
    from packaging.requirements import Requirement

    from edge.images.wheels import dependency_pins
    lock = lock_entries()
    print(f"{len(lock)} locked packages, {sum(len(h) for _, h in lock.values())} hashes")
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no --hash in the lock"
    for spec in dependency_pins():
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in lock, f"{req.name} (pyproject.toml) is missing from images/requirements.lock; regenerate it"
        assert req.specifier.contains(lock[name][0], prereleases=True), \
            f"the lock has {name}=={lock[name][0]}, which pyproject.toml's {spec} excludes; regenerate it"


def test_f23_image_build_downloads_and_installs_with_require_hashes(tmp_path, monkeypatch):
    """The commands the build runs (recorded where they would run): the download and the dependencies' install
    both read the lock with --require-hashes; only the agent's own wheel, built from this tree, goes in
    without (and without dependencies)."""
    from edge.images import host, rootfs, wheels
    from edge.images.recipe import load
    ran = []

    def record(*args, **kw):
        ran.append([str(a) for a in args])
    monkeypatch.setattr(host, "sh", record)
    wheels._download("aarch64", str(tmp_path / "wheels"), log=None)
    (tmp_path / "root").mkdir()
    rootfs.install_agent(load("qemu-arm64"), str(tmp_path / "root"), str(tmp_path / "wheels"), log=None)
    pip = [a for a in ran if a[1:3] == ["-m", "pip"]]
    assert [a[3] for a in pip] == ["download", "install", "install"]
    for cmd in pip[:2]:
        assert "--require-hashes" in cmd and cmd[cmd.index("-r") + 1] == wheels.LOCK
    assert "--no-deps" in pip[2] and pip[2][-1] == "hearth-edge" and "--no-index" in pip[2]
