"""A partitioned disk image made without loop mounts: each file system is built as its own file
(mkfs.vfat + mtools, mkfs.ext4 -d), the table is written by sfdisk on the image file, and each file system is
copied in at its offset. Everything here runs unprivileged apart from reading a root-owned tree.

Layout (GPT for UEFI boards, MBR for the Raspberry Pi, whose firmware reads only MBR):
    1  boot    FAT32, label HEARTHBOOT: bootloader, each slot's kernel and initramfs, the first-boot seed
    2  root-a  ext4, read-only at run time
    3  root-b  ext4, the other slot (an update is written here)
    4  data    ext4, label hearth-data: /var/lib/hearth (store, identity, config); grown at first boot
"""

import os
import subprocess
from dataclasses import dataclass

MiB = 1 << 20
ALIGN = 1 * MiB
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4773-8E79-3D69D8477DE4"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ROOT_AARCH64 = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
BOOT_LABEL = "HEARTHBOOT"
DATA_LABEL = "hearth-data"


class DiskError(Exception):
    pass


@dataclass(frozen=True)
class Part:
    name: str
    start: int        # bytes
    size: int


def layout(boot_mib: int, root_mib: int, data_mib: int) -> tuple[list[Part], int]:
    """Partitions at 1 MiB alignment, and the image size (with room for the backup GPT)."""
    parts = []
    pos = ALIGN
    for name, mib in (("boot", boot_mib), ("root-a", root_mib), ("root-b", root_mib), ("data", data_mib)):
        parts.append(Part(name, pos, mib * MiB))
        pos += mib * MiB
    return parts, pos + ALIGN


def sfdisk_script(parts: list[Part], table: str, machine: str, disk_id: str) -> str:
    """The sfdisk input for the layout (pure: the same layout always gives the same table)."""
    root_type = ROOT_X86_64 if machine == "x86_64" else ROOT_AARCH64
    if table == "gpt":
        lines = ["label: gpt", f"label-id: {disk_id}", "unit: sectors", "first-lba: 2048"]
        types = {"boot": ESP_TYPE, "root-a": root_type, "root-b": root_type, "data": LINUX_TYPE}
        import uuid
        for p in parts:       # partition GUIDs derived from the disk's, so the same inputs give the same table
            guid = uuid.uuid5(uuid.UUID(disk_id), p.name)
            lines.append(f'start={p.start // 512}, size={p.size // 512}, type={types[p.name]}, uuid={guid}, '
                         f'name="{p.name}"')
    elif table == "mbr":
        lines = ["label: dos", f"label-id: 0x{disk_id.replace('-', '')[:8]}", "unit: sectors"]
        types = {"boot": "c", "root-a": "83", "root-b": "83", "data": "83"}
        for p in parts:
            boot = ", bootable" if p.name == "boot" else ""
            lines.append(f"start={p.start // 512}, size={p.size // 512}, type={types[p.name]}{boot}")
    else:
        raise DiskError(f"unknown partition table {table!r}")
    return "\n".join(lines) + "\n"


def run(*args, **kw):
    try:
        return subprocess.run(args, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise DiskError(f"{args[0]} is not installed (Debian: see the Makefile's IMAGE_PACKAGES)") from None
    except subprocess.CalledProcessError as exc:
        raise DiskError(f"{' '.join(args[:3])}… failed: {exc.stderr.strip()[-800:]}") from None


def fat_image(path: str, size: int, files: dict[str, str], volume_id: str, epoch: int):
    """A FAT32 file system holding files {path inside: source file}, built with mtools (no mount)."""
    with open(path, "wb") as f:
        f.truncate(size)
    run("mkfs.vfat", "-F", "32", "-n", BOOT_LABEL, "-i", volume_id, "--invariant", path)
    made = set()
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(epoch)}
    for inside, source in sorted(files.items()):
        parts = inside.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                run("mmd", "-i", path, "::" + d, env=env)
                made.add(d)
        run("mcopy", "-i", path, "-m", source, "::" + "/".join(parts), env=env)


def ext4_image(path: str, size: int, tree: str | None, label: str, uuid: str, epoch: int):
    """An ext4 file system, filled from tree (ownership and modes kept) when given."""
    with open(path, "wb") as f:
        f.truncate(size)
    args = ["mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid, "-E", f"hash_seed={uuid},root_owner=0:0",
            "-O", "^has_journal" if tree is not None and label.startswith("root") else "has_journal"]
    if tree is not None:
        args += ["-d", tree]
    run(*args, path, env={**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)})


def ext4_bytes(f, offset: int = 0) -> int:
    """The size of the ext4 file system at offset in binary file f (as an update bundle is cut from an image)."""
    from edge.provisioning.host.bundle import ext4_size
    from edge.provisioning.slots import UpdateError
    try:
        return ext4_size(f, offset)
    except UpdateError as exc:
        raise DiskError(str(exc)) from None


def shrink_ext4(path: str) -> int:
    """Shrink an unmounted ext4 image to its content (resize2fs -M) and cut the file to match; the new size.
    A read-only root needs no free space, and a smaller root makes every update smaller."""
    run("e2fsck", "-f", "-y", path)
    run("resize2fs", "-M", path)
    with open(path, "r+b") as f:
        size = ext4_bytes(f)
        f.truncate(size)
    return size


def assemble(image: str, parts: list[Part], total: int, table_script: str, part_files: dict[str, str]):
    """Write the table into a sparse image file and copy each file system to its offset."""
    with open(image, "wb") as f:
        f.truncate(total)
    run("sfdisk", "--no-reread", "--no-tell-kernel", image, input=table_script)
    with open(image, "r+b") as out:
        for p in parts:
            src = part_files.get(p.name)
            if src is None:
                continue
            if os.path.getsize(src) > p.size:
                raise DiskError(f"the {p.name} file system ({os.path.getsize(src)} bytes) does not fit its "
                                f"partition ({p.size}); raise partitions.{p.name.split('-')[0]} in the recipe")
            out.seek(p.start)
            with open(src, "rb") as f:
                while True:
                    chunk = f.read(4 * MiB)
                    if not chunk:
                        break
                    if chunk.count(0) == len(chunk):      # keep the image sparse
                        out.seek(len(chunk), os.SEEK_CUR)
                    else:
                        out.write(chunk)
