"""`hearth flash IMAGE TARGET --seed FILE`: write a signed image (and a seed) to a disk or an image file.

Before anything is written: the manifest next to the image must carry a valid signature by a trusted key and
the image's SHA-256 must match it; an image built with --debug-console (its signed manifest says so) is written
only with allow_debug; the target must not be mounted, hold the running system or swap, have holders (a
device-mapper target such as dm-crypt or LVM, or an md array, built on it or on one of its partitions), or be
too small, and it is opened with O_EXCL, which the kernel refuses (EBUSY) while anything holds it (a mounted
file system, swap, dm, md, a ZFS pool, another exclusive opener). Then the image is written (decompressed on
the fly if .zst) around the page cache, flushed, read back from the medium and compared
(edge/provisioning/diskio.py), and the seed is copied onto the image's FAT boot partition with mtools at its
offset (nothing is mounted).
"""

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess

from edge.errors import EdgeError
from edge.identity import verify
from edge.provisioning.diskio import sha256_of_medium, write_stream

CHUNK = 4 << 20


class FlashError(EdgeError):
    pass


def manifest_path(image: str) -> str:
    base = image[:-4] if image.endswith(".zst") else image
    return (base[:-4] if base.endswith(".img") else base) + ".manifest.json"


def signed_bytes(manifest: dict) -> bytes:
    """What an image manifest's signature covers: the manifest without "signature", as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def load_manifest(image: str, trusted: list[str]) -> dict:
    """The image's manifest, its signature checked against the trusted signer ids."""
    path = manifest_path(image)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FlashError(f"no manifest {path}: an image without its signed manifest is not flashed") from None
    except json.JSONDecodeError as exc:
        raise FlashError(f"{path} is not valid JSON ({exc}); the manifest is damaged") from None
    signature = manifest.get("signature")
    signer = manifest.get("signed_by")
    if not signature or not signer:
        raise FlashError(f"{path} is not signed; refusing to flash an unsigned image")
    canonical = signed_bytes(manifest)
    try:
        sig = base64.b64decode(signature, validate=True)
    except ValueError:
        raise FlashError(f"{path}: the signature is not base64") from None
    if not verify(signer, canonical, sig):
        raise FlashError(f"{path}: the signature does not match the manifest (it was changed after signing, "
                         "or signed by another key); refusing to flash")
    if signer not in trusted:
        raise FlashError(f"{path} is signed by {signer}, which is not a key you trust; pass --trust {signer} if "
                         "you know it is the builder's")
    return manifest


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _dev_numbers(path: str) -> tuple[int, int] | None:
    st = os.stat(path)
    return (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISBLK(st.st_mode) else None


def _partitions_of(name: str, sysfs: str = "/sys") -> set[str]:
    """The block device name and the names of its partitions (from /sys)."""
    out = {name}
    base = f"{sysfs}/class/block/{name}"
    if os.path.isdir(base):
        for child in os.listdir(base):
            if os.path.exists(os.path.join(base, child, "partition")):
                out.add(child)
    return out


def holders_of(name: str, sysfs: str = "/sys") -> list[tuple[str, str]]:
    """(device, holder) for the disk `name` and each of its partitions that the kernel has stacked another
    block device on (holders/: dm-crypt, LVM and other device-mapper targets, md arrays, bcache)."""
    out = []
    for dev in sorted(_partitions_of(name, sysfs)):
        base = f"{sysfs}/class/block/{name}" + ("" if dev == name else f"/{dev}")
        try:
            out += [(dev, h) for h in sorted(os.listdir(os.path.join(base, "holders")))]
        except FileNotFoundError:
            pass
    return out


def refuse_reason(target: str, mounts: str | None = None, swaps: str | None = None,
                  sysfs: str = "/sys") -> str | None:
    """Why target must not be written, or None. mounts/swaps: the text of /proc/mounts and /proc/swaps; sysfs:
    where sysfs is mounted (a synthetic tree in tests)."""
    if not os.path.exists(target):
        return None                         # a new image file
    st = os.stat(target)
    if stat.S_ISREG(st.st_mode):
        return None
    if not stat.S_ISBLK(st.st_mode):
        return f"{target} is neither a block device nor a regular file"
    name = os.path.basename(os.path.realpath(target))
    parent = os.path.realpath(f"{sysfs}/class/block/{name}/..")
    if os.path.exists(f"{sysfs}/class/block/{name}/partition"):
        return f"{target} is a partition; give the whole disk (/dev/{os.path.basename(parent)})"
    names = _partitions_of(name, sysfs)
    held = holders_of(name, sysfs)
    if held:
        what = ", ".join(f"/dev/{d} by {h}" for d, h in held)
        return (f"{target} is in use by the kernel: {what} (a device-mapper target such as dm-crypt or LVM, or an "
                "md array, is built on it, and may hold the running system); stop that first")
    if mounts is None:
        with open("/proc/mounts") as f:
            mounts = f.read()
    if swaps is None:
        with open("/proc/swaps") as f:
            swaps = f.read()
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("/dev/"):
            dev = os.path.basename(os.path.realpath(fields[0]))
            if dev in names:
                what = "the running system" if fields[1] in ("/", "/boot", "/boot/efi", "/usr") else fields[1]
                return f"{target} is in use: /dev/{dev} is mounted at {fields[1]} ({what}); unmount it first"
    for line in swaps.splitlines()[1:]:
        dev = os.path.basename(os.path.realpath(line.split()[0])) if line.split() else ""
        if dev in names:
            return f"{target} holds swap (/dev/{dev}); turn it off first"
    return None


def _source(image: str):
    """A readable binary stream of the raw image (zstd decompressed in a child process for .zst)."""
    if image.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise FlashError("flashing a .zst image needs zstd (Debian package zstd)")
        proc = subprocess.Popen(["zstd", "-dc", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return proc.stdout, proc
    return open(image, "rb"), None


def open_exclusive(target: str) -> int:
    """target (a block device) opened for reading and writing with O_EXCL: the kernel answers EBUSY while it is
    mounted, swap, a member of dm/md/a ZFS pool, or opened exclusively by anyone else, and no one else can take
    it while the descriptor is open."""
    try:
        return os.open(target, os.O_RDWR | os.O_EXCL)
    except OSError as exc:
        import errno
        if exc.errno == errno.EBUSY:
            raise FlashError(f"{target} is in use (the kernel refused an exclusive open: it is mounted, swap, part "
                             "of a device-mapper, md or ZFS volume, or open by another program); stop that "
                             "first") from None
        raise FlashError(f"cannot open {target}: {exc.strerror}") from None


def flash(image: str, target: str, *, trusted: list[str], seed: str | None = None, progress=None,
          force_size: bool = False, allow_debug: bool = False, sysfs: str = "/sys") -> dict:
    manifest = load_manifest(image, trusted)
    why = refuse_reason(target, sysfs=sysfs)
    if why:
        raise FlashError(why)
    want = manifest["compressed" if image.endswith(".zst") else "image"]
    if os.path.basename(image) != want["file"]:
        raise FlashError(f"{image} is not the file its manifest describes ({want['file']})")
    if sha256_of(image) != want["sha256"]:
        raise FlashError(f"{image} does not match its manifest's SHA-256: it is corrupt or was changed; "
                         "download or build it again")
    if manifest.get("debug_console") and not allow_debug:
        raise FlashError(f"{image} was built with --debug-console (a root shell with no password on its serial "
                         "console, as its signed manifest says); it is for tests; pass --allow-debug to write it")
    size = manifest["image"]["size"]
    is_block = os.path.exists(target) and stat.S_ISBLK(os.stat(target).st_mode)
    if is_block:
        fd = open_exclusive(target)           # held until the image is written and read back
        capacity = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        if capacity < size:
            os.close(fd)
            raise FlashError(f"{target} holds {capacity} bytes; the image needs {size}")
    else:
        fd = None
    try:
        return _write_and_check(image, target, manifest, fd, seed, progress)
    finally:
        if fd is not None:
            os.close(fd)


def _write_and_check(image: str, target: str, manifest: dict, block_fd: int | None, seed, progress) -> dict:
    size = manifest["image"]["size"]
    is_block = block_fd is not None
    if seed:
        from edge.provisioning.seed import parse_seed
        with open(seed) as f:
            parse_seed(f.read(), seed)
    src, proc = _source(image)
    h = hashlib.sha256()
    fd = block_fd if is_block else os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            written = write_stream(src, fd, h, progress)
        finally:
            src.close()
            if proc:
                proc.wait()
        if written != size or h.hexdigest() != manifest["image"]["sha256"]:
            raise FlashError(f"the image read back as {written} bytes with another SHA-256 than its manifest says; "
                             "the source is damaged")
        # what the disk holds now, read from it (not from the cache the write went through)
        check, _ = sha256_of_medium(fd, size)
    finally:
        if not is_block:
            os.close(fd)
    if check != manifest["image"]["sha256"]:
        raise FlashError(f"verification failed: {target} does not hold what was written (a failing card or "
                         "disk?); try another")
    if seed:
        if is_block:
            os.fsync(block_fd)
        write_seed(target, manifest, seed)
    return {"target": target, "bytes": written, "sha256": check, "seed": bool(seed),
            "board": manifest["board"], "version": manifest["version"],
            "debug_console": bool(manifest.get("debug_console"))}


def write_seed(target: str, manifest: dict, seed: str):
    """Copy the seed onto the boot partition (FAT) inside target, at its offset; read it back to check."""
    boot = next(p for p in manifest["partitions"] if p["name"] == "boot")
    where = f"{target}@@{boot['start']}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    copies = [["mcopy", "-o", "-i", where, seed, "::hearth-seed.toml"]]
    sig = os.path.join(os.path.dirname(os.path.abspath(seed)), "hearth-seed.sig")
    if os.path.exists(sig):           # a fleet's signature travels with its seed
        copies.append(["mcopy", "-o", "-i", where, sig, "::hearth-seed.sig"])
    for args in copies:
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        if r.returncode:
            raise FlashError(f"writing the seed failed: {r.stderr.strip()}")
    r = subprocess.run(["mtype", "-i", where, "::hearth-seed.toml"], capture_output=True, env=env)
    with open(seed, "rb") as f:
        if r.returncode or r.stdout != f.read():
            raise FlashError("the seed on the boot partition does not read back as written")
