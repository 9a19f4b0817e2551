"""`hearth update bundle`: a signed update bundle made from a built image (on the build machine).

The bundle's root is slot a's file system cut from the image (as long as the file system, not the partition);
the kernel, initramfs and (on a Pi) device trees are read from the image's FAT partition with mtools, at its
offset (nothing is mounted). The tar's members are owned by root and dated 0: the same inputs, the same bytes.
The format is edge/provisioning/bundle.py's; the device reads it in edge/provisioning/device/.
"""

import json
import os
import shutil
import subprocess
import tarfile

from edge.provisioning.bundle import CHUNK, ORDER, version_key
from edge.provisioning.host.flash import sha256_of
from edge.provisioning.slots import UpdateError


def make_bundle(image: str, manifest_path: str, out: str, *, version: str, key_path: str, root_img: str | None = None,
                work: str | None = None, downgrade_from: str | None = None) -> dict:
    """A bundle from a built image: its root-a file system (or root_img) and slot a's kernel and initramfs.
    downgrade_from: the newest version floor this bundle may go below (a signed, deliberate downgrade)."""
    from edge.identity import Identity
    version_key(version)                  # a device orders it against its floor: it must start with a number
    if downgrade_from is not None:
        version_key(downgrade_from)
    with open(manifest_path) as f:
        image_manifest = json.load(f)
    parts = {p["name"]: p for p in image_manifest["partitions"]}
    work = work or os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(work, f".bundle-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    try:
        if root_img is None:          # slot A's file system, as long as it is (not the whole partition)
            root_img = os.path.join(tmp, "root.img")
            with open(image, "rb") as f:
                size = ext4_size(f, parts["root-a"]["start"])
            _copy_range(image, root_img, parts["root-a"]["start"], size)
        subprocess.run(["zstd", "-q", "-f", "-T0", "-3", root_img, "-o", os.path.join(tmp, "root.img.zst")],
                       check=True)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        where = f"{image}@@{parts['boot']['start']}"
        for name in ("vmlinuz", "initrd.img"):
            subprocess.run(["mcopy", "-o", "-i", where, f"::a/{name}", os.path.join(tmp, name)], check=True, env=env)
        names = list(ORDER[2:])
        if image_manifest.get("bootloader") == "raspi-firmware":
            listing = subprocess.run(["mdir", "-b", "-i", where, "::a/"], check=True, env=env, capture_output=True,
                                     text=True).stdout.split()
            dtbs = sorted(os.path.basename(p) for p in listing if p.endswith(".dtb"))
            os.makedirs(os.path.join(tmp, "dtbs"))
            for d in dtbs:
                subprocess.run(["mcopy", "-o", "-i", where, f"::a/{d}", os.path.join(tmp, "dtbs", d)], check=True,
                               env=env)
            _write_tar(os.path.join(tmp, "devicetrees.tar"), os.path.join(tmp, "dtbs"), dtbs)
            names.append("devicetrees.tar")
        files = {}
        for name in names:
            path = os.path.join(tmp, name)
            files[name] = {"size": os.path.getsize(path), "sha256": sha256_of(path)}
        manifest = {"format": 1, "board": image_manifest["board"], "version": version,
                    "root_size": os.path.getsize(root_img), "root_sha256": sha256_of(root_img), "files": files,
                    # signed with the rest: a device that is not a debug image refuses a root shell on its console
                    "debug_console": bool(image_manifest.get("debug_console", False))}
        if downgrade_from is not None:
            manifest["downgrade_from"] = downgrade_from
        body = json.dumps(manifest, sort_keys=True, indent=1).encode()
        with open(os.path.join(tmp, "manifest.json"), "wb") as f:
            f.write(body)
        with open(os.path.join(tmp, "manifest.sig"), "wb") as f:
            f.write(Identity.load(key_path).sign(body))
        _write_tar(out, tmp, ORDER[:2] + names)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tar(out: str, directory: str, names: list[str]):
    """A tar of directory's files `names`, in that order, owned by root and dated 0 (the same inputs, the same
    bytes)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(os.path.join(directory, name), arcname=name)
            info.uid = info.gid = info.mtime = 0
            info.uname = info.gname = "root"
            with open(os.path.join(directory, name), "rb") as f:
                tar.addfile(info, f)


def ext4_size(f, offset: int = 0) -> int:
    """The size of the ext4 file system at offset in binary file f, read from its superblock."""
    import struct
    f.seek(offset + 1024)
    sb = f.read(1024)
    if len(sb) < 1024 or sb[0x38:0x3A] != b"\x53\xef":
        raise UpdateError("no ext4 file system there (its superblock is missing)")
    lo, = struct.unpack_from("<I", sb, 0x4)
    hi, = struct.unpack_from("<I", sb, 0x150)
    return ((hi << 32) | lo) * (1024 << struct.unpack_from("<I", sb, 0x18)[0])


def _copy_range(src: str, dst: str, start: int, size: int):
    with open(src, "rb") as i, open(dst, "wb") as o:
        i.seek(start)
        left = size
        while left:
            chunk = i.read(min(CHUNK, left))
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                o.seek(len(chunk), os.SEEK_CUR)
            else:
                o.write(chunk)
            left -= len(chunk)
        o.truncate(size)
