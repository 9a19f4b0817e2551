"""Signed A/B updates: install to the other root slot, boot it on trial, commit when healthy, else roll back.

A bundle is a tar with, in this order:
    manifest.json   {"format": 1, "board", "version", "files": {name: {"size", "sha256"}}}
    manifest.sig    Ed25519 signature of manifest.json's bytes by a key listed in /etc/hearth/update-keys
    root.img.zst    the new root file system (ext4), compressed
    vmlinuz, initrd.img
On a Raspberry Pi (no UEFI) the same order holds with the firmware's own A/B switch: config.txt names the
committed slot's directory (os_prefix=a/), step 2 deletes tryboot.txt, step 4 also writes the slot's device
trees and cmdline.txt, and step 5 writes tryboot.txt naming the new slot; `reboot "0 tryboot"` boots it once.
The health check commits by rewriting config.txt; a failed trial, a crash or a power cut boots config.txt's
slot again, because the firmware's tryboot flag lasts one boot.

The project's own format rather than RAUC's: one Ed25519 key signs images, seeds and bundles alike, and the
trial boot and rollback come from systemd-boot's boot counting, already in Debian's systemd, with no daemon.

Install order, so that a power cut at any moment leaves a slot that boots:
  1. before anything is written: the signature; the board (the bundle's must be the running image's, which
     /etc/hearth/image.json in the read-only root records); the version floor (below); and every file's SHA-256,
     by reading the whole bundle once (the kernel, initramfs and device trees are kept in memory, the root is
     hashed again as it is written, and a bundle changed between the two reads is refused);
  2. every loader entry of the inactive slot is deleted (an entry never points at a half-written slot);
  3. the root file system is written to the inactive partition, flushed, read back and compared;
  4. its kernel and initramfs are written to the boot partition (temporary name, flush, rename);
  5. last, its entry `hearth-N-SLOT+3.conf` is written (temporary name, flush, rename): from this moment the
     next boot tries the new slot, at most three times; hearth-health.service's success lets
     systemd-bless-boot drop the counter (committed); three failures make the bootloader boot the old slot.
On UEFI one more entry, hearth-0-committed.conf, always names the committed slot: the image is built with it
naming slot a, and a healthy boot (commit()) makes it name the running slot. It sorts after every generation's
entry and before any whose tries are used up, so systemd-boot picks it only when no other entry is usable: the
entries removed, unreadable, or all bad (loader.conf's `default hearth-*` matches it too). An install never
touches it, and installs only when the running slot is the committed one, so it never names the slot being
written.

Rollback protection: hearth-versions.json on the boot partition (root-only, like the loader entries) keeps the
version floor, the version last committed, and the version installed in each slot. commit() raises (or, after a
signed downgrade, sets) the floor to the running slot's version. A bundle older than the floor is refused unless
its signed manifest says `"downgrade_from": V` with V at least the floor (`hearth update bundle --downgrade-from
V`): a downgrade signed for devices at V cannot be replayed against a device that has since moved past V.
Versions compare by their leading dotted numbers (1.10 > 1.9); a suffix (-rc1, -test) does not order them.
Where the file is missing (a freshly flashed image) the floor is the running image's own version.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time

from edge.atomic import fsync_dir, write_atomic
from edge.errors import EdgeError
from edge.flash import sha256_of
from edge.identity import verify

UPDATE_KEYS = "/etc/hearth/update-keys"
BOOT = "/efi"
TRIES = 3
ENTRY_RE = re.compile(r"hearth-(\d+)-([ab])(?:\+(\d+)(?:-(\d+))?)?\.conf")
FALLBACK = "hearth-0-committed.conf"
# systemd-boot's record of the entry it booted (the loader interface's vendor GUID)
ENTRY_SELECTED = "/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
IMAGE_INFO = "/etc/hearth/image.json"     # written by the image build: {"board", "version", "debug_console"}
VERSIONS = "hearth-versions.json"         # on the boot partition: {"floor", "slots": {slot: version}}
ORDER = ["manifest.json", "manifest.sig", "root.img.zst", "vmlinuz", "initrd.img"]
OPTIONAL = ["devicetrees.tar"]      # boards whose firmware loads the device tree from the slot (Raspberry Pi)
CHUNK = 4 << 20


class UpdateError(EdgeError):
    pass


# building a bundle (on the build machine) -------------------------------------------------------------------

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
                    "root_size": os.path.getsize(root_img), "files": files,
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


# on the device ----------------------------------------------------------------------------------------------

def trusted_keys(path: str = UPDATE_KEYS) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def current_slot(cmdline: str | None = None) -> str:
    if cmdline is None:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    m = re.search(r"\bhearth\.slot=([ab])\b", cmdline)
    if not m:
        raise UpdateError("this system was not booted from a Hearth slot (no hearth.slot= on the kernel command "
                          "line); updates install only on Hearth images")
    return m.group(1)


def entries(boot: str = BOOT) -> list[dict]:
    d = os.path.join(boot, "loader", "entries")
    out = []
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        m = ENTRY_RE.fullmatch(name)
        if m:
            left = None if m.group(3) is None else int(m.group(3))
            out.append({"file": name, "generation": int(m.group(1)), "slot": m.group(2), "tries_left": left,
                        "tries_done": int(m.group(4) or 0),
                        "state": "good" if left is None else ("bad" if left == 0 else "trial")})
    return sorted(out, key=lambda e: -e["generation"])


def read_bundle(path: str, trusted: list[str]) -> tuple[dict, tarfile.TarFile]:
    """The verified manifest and the open tar, positioned after the signature. UpdateError if unsigned,
    signed by an untrusted key, or malformed."""
    f = open(path, "rb")
    manifest, _ = _read_signed(f, path, trusted)
    f.seek(0)
    tar = tarfile.open(fileobj=f, mode="r|")
    tar.next()
    tar.next()
    return manifest, tar


def _read_signed(f, path: str, trusted: list[str]) -> tuple[dict, bytes]:
    """The manifest of the bundle open as f (from its start) and its bytes, the signature checked."""
    if not trusted:
        raise UpdateError(f"no update keys are configured ({UPDATE_KEYS} is empty); this device accepts no bundle")
    try:
        tar = tarfile.open(fileobj=f, mode="r|")
        first = tar.next()
        if first is None or first.name != "manifest.json" or first.size > 1 << 20:
            raise UpdateError(f"{path} is not a Hearth bundle (it must start with manifest.json)")
        body = tar.extractfile(first).read()
        second = tar.next()
        if second is None or second.name != "manifest.sig" or second.size > 1024:
            raise UpdateError(f"{path} has no signature (manifest.sig); refusing it")
        sig = tar.extractfile(second).read()
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError(f"{path} is not a readable bundle: {exc}") from None
    if not any(verify(k, body, sig) for k in trusted):
        raise UpdateError(f"{path} is not signed by a key this device trusts ({', '.join(trusted)}); refusing it")
    try:
        manifest = json.loads(body)
        files = manifest["files"]
        assert set(ORDER[2:]) <= set(files) <= set(ORDER[2:] + OPTIONAL)
        assert all(isinstance(files[n]["size"], int) and isinstance(files[n]["sha256"], str) for n in files)
        assert isinstance(manifest["board"], str) and isinstance(manifest["version"], str)
    except (ValueError, KeyError, AssertionError, TypeError):
        raise UpdateError(f"{path}: the signed manifest is not one this version understands") from None
    return manifest, body


def _stream_member(tar, want: str, expect: dict):
    member = tar.next()
    if member is None or member.name != want:
        raise UpdateError(f"the bundle lacks {want} where it should be")
    if member.size != expect["size"]:
        raise UpdateError(f"{want} is {member.size} bytes; the signed manifest says {expect['size']}")
    return tar.extractfile(member)


def _reopen(f, body: bytes):
    """The bundle's tar read again from its start, positioned after the signature; the manifest must be the
    bytes verified before (else the file changed under us)."""
    f.seek(0)
    tar = tarfile.open(fileobj=f, mode="r|")
    first = tar.next()
    if first is None or first.name != "manifest.json" or tar.extractfile(first).read() != body:
        raise UpdateError("the bundle changed while it was being read; nothing more is written (copy it to a "
                          "place no one else can write and apply it again)")
    tar.next()
    return tar


def verify_payload(f, body: bytes, manifest: dict) -> dict[str, bytes]:
    """Read the whole bundle once and check every file's size and SHA-256 against the signed manifest, writing
    nothing. Returns the bytes of the small files (kernel, initramfs, device trees) so that what is installed
    later is what was checked here; the root is hashed again as it is written."""
    kept = {}
    try:
        tar = _reopen(f, body)
        for name in [n for n in ORDER[2:] + OPTIONAL if n in manifest["files"]]:
            src = _stream_member(tar, name, manifest["files"][name])
            h = hashlib.sha256()
            chunks = []
            for chunk in iter(lambda: src.read(CHUNK), b""):
                h.update(chunk)
                if name != "root.img.zst":
                    chunks.append(chunk)
            if h.hexdigest() != manifest["files"][name]["sha256"]:
                raise UpdateError(f"{name} in the bundle does not match its signed hash; refusing the bundle "
                                  "(nothing was written)")
            if name != "root.img.zst":
                kept[name] = b"".join(chunks)
            if name == "devicetrees.tar":
                devicetrees(kept[name])
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError(f"the bundle is damaged ({exc}); nothing was written") from None
    return kept


# rollback protection --------------------------------------------------------------------------------------

VERSION_RE = re.compile(r"\d+(?:\.\d+)*")


def version_key(version: str) -> tuple[int, ...]:
    """What versions are ordered by: their leading dotted numbers (2 == 2.0 < 2.0.1 < 2.10); a suffix does not
    order them."""
    m = VERSION_RE.match(str(version))
    if not m:
        raise UpdateError(f"version {version!r} does not start with a number, so it cannot be ordered against "
                          "this device's version floor; make the bundle with a numbered --version")
    parts = [int(x) for x in m.group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def running_image(path: str = IMAGE_INFO) -> dict:
    """What the running image's build recorded about it: {"board", "version", "debug_console"}."""
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise UpdateError(f"this system does not record its board and version ({path} is missing: an image built "
                          "before Hearth recorded them); flash a current image to receive updates") from None
    except (OSError, ValueError) as exc:
        raise UpdateError(f"{path} is unreadable ({exc}); flash a current image to receive updates") from None
    if not isinstance(info, dict) or not isinstance(info.get("board"), str):
        raise UpdateError(f"{path} names no board; flash a current image to receive updates")
    return info


def read_versions(boot: str = BOOT) -> dict:
    """The boot partition's record {"floor", "committed", "slots": {slot: version}}; {} when there is none."""
    path = os.path.join(boot, VERSIONS)
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UpdateError(f"{path} is damaged ({exc}); remove it to make the running image's version the floor "
                          "again") from None
    if not isinstance(state, dict) or not isinstance(state.get("slots", {}), dict):
        raise UpdateError(f"{path} is not one Hearth wrote; remove it to make the running image's version the "
                          "floor again")
    return state


def _write_versions(boot: str, state: dict):
    write_atomic(os.path.join(boot, VERSIONS), (json.dumps(state, sort_keys=True, indent=1) + "\n").encode())


def version_floor(boot: str, image: dict) -> str | None:
    """The oldest version this device installs without a signed downgrade."""
    return read_versions(boot).get("floor") or image.get("version")


def check_bundle(manifest: dict, image: dict, boot: str, *, allow_debug: bool = False, image_info: str = IMAGE_INFO):
    """Refuse, before anything is written, a bundle for another board, one older than the floor (unless its
    signed manifest allows that downgrade), and a debug image on a device that is not one."""
    if manifest["board"] != image["board"]:
        raise UpdateError(f"this bundle is for board {manifest['board']}; this device is {image['board']} (as "
                          f"{image_info} records); use a bundle made from a {image['board']} image")
    floor = version_floor(boot, image)
    if floor is not None and version_key(manifest["version"]) < version_key(floor):
        allowed = manifest.get("downgrade_from")
        if not isinstance(allowed, str) or version_key(allowed) < version_key(floor):
            signed = f"it allows a downgrade only from {allowed} or older" if isinstance(allowed, str) else \
                "it allows no downgrade"
            raise UpdateError(
                f"refusing {manifest['version']}: it is older than this device's version floor {floor} (the last "
                f"committed version, kept in {os.path.join(boot, VERSIONS)}) and {signed}; to go back on purpose, "
                f"make the bundle with `hearth update bundle --downgrade-from {floor}` (signed like any bundle)")
    if manifest.get("debug_console") and not image.get("debug_console") and not allow_debug:
        raise UpdateError("this bundle's image has a root shell on its serial console (built with --debug-console) "
                          "and this device is not a debug image; pass --allow-debug if that is what you want")


def apply(bundle: str, *, boot: str = BOOT, trusted: list[str] | None = None, device_for=None, cmdline=None,
          log=print, pause_after_root=None, image_info: str = IMAGE_INFO, allow_debug: bool = False) -> dict:
    """Install bundle to the inactive slot; returns {"slot", "version", "entry"}."""
    trusted = trusted_keys() if trusted is None else trusted
    with open(bundle, "rb") as f:
        manifest, body = _read_signed(f, bundle, trusted)
        check_bundle(manifest, running_image(image_info), boot, allow_debug=allow_debug, image_info=image_info)
        return _install(f, body, manifest, boot=boot, device_for=device_for, cmdline=cmdline, log=log,
                        pause_after_root=pause_after_root)


def _install(f, body, manifest, *, boot, device_for, cmdline, log, pause_after_root) -> dict:
    if cmdline is None:
        with open("/proc/cmdline") as c:
            cmdline = c.read()
    active = current_slot(cmdline)
    target = "b" if active == "a" else "a"
    device = (device_for or (lambda s: slot_device(s, cmdline)))(target)
    raspi = is_raspi(boot)
    if raspi:
        committed = raspi_committed(boot)
        if committed != active:
            raise UpdateError(f"slot {active} is running on trial and not committed yet (config.txt still boots "
                              f"slot {committed}); install the next update once it is")
    else:
        existing = entries(boot)
        edir = os.path.join(boot, "loader", "entries")
        committed = fallback_slot(boot)
        mine = [e for e in existing if e["slot"] == active]
        if committed not in (None, active) or (committed is None and mine and mine[0]["state"] != "good"):
            raise UpdateError(f"slot {active} is running on trial and not committed yet (slot "
                              f"{committed or target} is the committed one); install the next update once it is")
        generation = max((e["generation"] for e in existing), default=0) + 1
    # 1. every file of the bundle checked against the signed manifest, before anything is written
    log(f"checking {manifest['version']} ({manifest['board']}) against its signed manifest")
    small = verify_payload(f, body, manifest)
    state = read_versions(boot)
    # 2. the inactive slot stops being bootable before it is touched
    if raspi:
        tryboot = os.path.join(boot, "tryboot.txt")
        if os.path.exists(tryboot):
            os.unlink(tryboot)
        fsync_dir(boot)
    else:
        for e in existing:
            if e["slot"] == target:
                os.unlink(os.path.join(edir, e["file"]))
        fsync_dir(edir)
    # what the slot will hold: commit() makes it the floor once it has booted healthy
    state.setdefault("slots", {})[target] = manifest["version"]
    _write_versions(boot, state)
    log(f"installing {manifest['version']} into slot {target} ({device})")
    # 3. the root file system, decompressed on the way into the partition, then read back
    try:
        tar = _reopen(f, body)
        src = _stream_member(tar, "root.img.zst", manifest["files"]["root.img.zst"])
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError(f"the bundle became unreadable while it was installed ({exc}); slot {target} is left "
                          f"unbootable and slot {active} stays in use") from None
    zstd = subprocess.Popen(["zstd", "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    h_in = hashlib.sha256()
    written = 0
    fd = os.open(device, os.O_WRONLY)
    try:
        import threading

        def feed():
            try:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    h_in.update(chunk)
                    zstd.stdin.write(chunk)
            finally:
                zstd.stdin.close()
        feeder = threading.Thread(target=feed)
        feeder.start()
        h_out = hashlib.sha256()
        for chunk in iter(lambda: zstd.stdout.read(CHUNK), b""):
            h_out.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            written += len(chunk)
        feeder.join()
        zstd.wait()
        os.fsync(fd)
    finally:
        os.close(fd)
    if h_in.hexdigest() != manifest["files"]["root.img.zst"]["sha256"]:
        raise UpdateError("the bundle changed while it was installed (its root file system no longer matches "
                          f"the signed hash it had when checked); slot {target} is left unbootable and slot "
                          f"{active} stays in use")
    if written != manifest["root_size"]:
        raise UpdateError(f"the root file system decompressed to {written} bytes, not {manifest['root_size']}")
    back = hashlib.sha256()
    with open(device, "rb") as slot_file:
        left = written
        while left:
            chunk = slot_file.read(min(CHUNK, left))
            back.update(chunk)
            left -= len(chunk)
    if back.hexdigest() != h_out.hexdigest():
        raise UpdateError(f"slot {target} did not read back as written (a failing disk?); it stays unbootable")
    if pause_after_root:
        pause_after_root()
    # 4. kernel and initramfs (and, on a Pi, the device trees and the kernel command line)
    sdir = os.path.join(boot, target)
    os.makedirs(sdir, exist_ok=True)
    for name in [n for n in ORDER[3:] + OPTIONAL if n in manifest["files"]]:
        data = small[name]                    # the bytes checked in step 1
        if name == "devicetrees.tar":
            _write_devicetrees(data, sdir)
        else:
            write_atomic(os.path.join(sdir, name), data)
    if raspi:
        with open(os.path.join(boot, active, "cmdline.txt")) as f:
            write_atomic(os.path.join(sdir, "cmdline.txt"), switch_slot(f.read(), active, target).encode())
        # 5. tryboot.txt, last: from here `reboot "0 tryboot"` boots the new slot, once
        with open(os.path.join(boot, "config.txt")) as f:
            write_atomic(os.path.join(boot, "tryboot.txt"), raspi_config_for(f.read(), target).encode())
        log(f"installed {manifest['version']} in slot {target}; `hearth update apply --reboot` (or "
            f"`systemctl reboot \"0 tryboot\"`) boots it on trial; it is committed when the node reports healthy, "
            f"and any other boot comes back to slot {active}")
        return {"slot": target, "version": manifest["version"], "entry": "tryboot.txt"}
    # 5. the entry, last: from here the next boot tries the new slot
    entry = f"hearth-{generation}-{target}+{TRIES}.conf"
    write_atomic(os.path.join(edir, entry), entry_for(target, active, existing, edir).encode())
    log(f"installed {manifest['version']} in slot {target}; it boots on trial next time ({entry}) and is "
        "committed when the node reports healthy, else slot " + active + " comes back by itself")
    return {"slot": target, "version": manifest["version"], "entry": entry}


def slot_device(slot: str, cmdline: str) -> str:
    """The block device of a root slot, found the way the running kernel found its root: by GPT partition name
    (root=PARTLABEL=root-a) or, on MBR disks, by partition UUID (root=PARTUUID=<disk id>-02 for a, -03 for b)."""
    m = re.search(r"\broot=PARTUUID=([0-9a-f]{8})-0[23]\b", cmdline)
    if m:
        return f"/dev/disk/by-partuuid/{m.group(1)}-0{2 if slot == 'a' else 3}"
    return f"/dev/disk/by-partlabel/root-{slot}"


def switch_slot(text: str, active: str, target: str) -> str:
    """A kernel command line (or loader entry) of slot `active`, rewritten for slot `target`."""
    text = text.replace(f"root=PARTLABEL=root-{active}", f"root=PARTLABEL=root-{target}")
    text = re.sub(r"\b(root=PARTUUID=[0-9a-f]{8})-0[23]\b", rf"\g<1>-0{2 if target == 'a' else 3}", text)
    text = text.replace(f"hearth.slot={active}", f"hearth.slot={target}")
    if f"hearth.slot={target}" not in text:
        raise UpdateError("the running slot's boot configuration is not one Hearth wrote (no hearth.slot=)")
    return text


def devicetrees(data: bytes) -> list[tuple[str, bytes]]:
    """The device trees in devicetrees.tar, every member checked to be one (a plain .dtb file, no path)."""
    import io
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            for member in t.getmembers():
                name = member.name
                if not member.isfile() or "/" in name or not name.endswith(".dtb") or member.size > 1 << 20:
                    raise UpdateError(f"devicetrees.tar holds {name!r}, which is not a device tree; refusing the "
                                      "bundle (nothing was written)")
                out.append((name, t.extractfile(member).read()))
    except tarfile.TarError as exc:
        raise UpdateError(f"devicetrees.tar is not a readable tar ({exc}); refusing the bundle") from None
    return out


def _write_devicetrees(data: bytes, sdir: str):
    for name, dtb in devicetrees(data):
        write_atomic(os.path.join(sdir, name), dtb)


# Raspberry Pi: config.txt's os_prefix is the committed slot; tryboot.txt, when present, the one on trial.
PREFIX_RE = re.compile(r"^os_prefix=([ab])/\s*$", re.M)


def is_raspi(boot: str = BOOT) -> bool:
    return os.path.exists(os.path.join(boot, "config.txt"))


def _prefix(path: str) -> str | None:
    try:
        with open(path) as f:
            m = PREFIX_RE.search(f.read())
    except FileNotFoundError:
        return None
    return m.group(1) if m else None


def raspi_committed(boot: str = BOOT) -> str:
    slot = _prefix(os.path.join(boot, "config.txt"))
    if slot is None:
        raise UpdateError(f"{boot}/config.txt names no Hearth slot (os_prefix=a/ or b/)")
    return slot


def raspi_config_for(config: str, slot: str) -> str:
    if not PREFIX_RE.search(config):
        raise UpdateError("config.txt names no Hearth slot (os_prefix=a/ or b/); it is not one Hearth wrote")
    return PREFIX_RE.sub(f"os_prefix={slot}/", config)


def fallback_slot(boot: str = BOOT) -> str | None:
    """The slot hearth-0-committed.conf names, or None when it is missing or not one Hearth wrote."""
    try:
        with open(os.path.join(boot, "loader", "entries", FALLBACK), errors="replace") as f:
            m = re.search(r"^options .*\bhearth\.slot=([ab])\b", f.read(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


def fallback_entry(text: str, slot: str) -> str:
    """The committed slot's fallback entry: its own entry's text, titled as the fallback."""
    title = f"title Hearth (slot {slot}, committed: fallback)"
    return re.sub(r"^title .*$", title, text, count=1, flags=re.M) if re.search(r"^title ", text, re.M) \
        else f"{title}\n{text}"


def commit(boot: str = BOOT, cmdline: str | None = None, log=print) -> str | None:
    """After a healthy boot: make the running slot the one that boots (on a Pi, config.txt names it and
    tryboot.txt goes; on UEFI systemd-bless-boot marks its entry good, and here the fallback entry is made to
    name it). Returns the slot committed, or None when there was nothing to commit. Either way the version
    floor becomes the running slot's version."""
    raise_floor(boot, cmdline, log)
    if not is_raspi(boot):
        return commit_fallback(boot, cmdline, log)
    slot = current_slot(cmdline)
    config = os.path.join(boot, "config.txt")
    if raspi_committed(boot) == slot:
        return None
    with open(config) as f:
        text = f.read()
    write_atomic(config, raspi_config_for(text, slot).encode())
    tryboot = os.path.join(boot, "tryboot.txt")
    if os.path.exists(tryboot):
        os.unlink(tryboot)
        fsync_dir(boot)
    log(f"hearth: slot {slot} committed (config.txt boots it from now on)")
    return slot


def raise_floor(boot: str = BOOT, cmdline: str | None = None, log=print, image_info: str = IMAGE_INFO) -> str | None:
    """After a healthy boot: the running slot's version (recorded when it was installed, else the running
    image's own) becomes the version floor. Lower than before only after a signed downgrade was installed."""
    slot = current_slot(cmdline)
    try:
        state = read_versions(boot)
        version = state.get("slots", {}).get(slot)
        if version is None:
            try:
                version = running_image(image_info).get("version")
            except UpdateError:
                version = None
        if version is None or (state.get("floor") == version and state.get("committed") == slot):
            return None
        version_key(version)
        state.setdefault("slots", {})[slot] = version
        state.update(floor=version, committed=slot)
        _write_versions(boot, state)
    except (UpdateError, OSError) as exc:   # the boot was healthy all the same: no reboot over the floor
        log(f"hearth: could not record the version floor ({exc})")
        return None
    log(f"hearth: version floor {version} (slot {slot}); older bundles need a signed downgrade")
    return version


def commit_fallback(boot: str = BOOT, cmdline: str | None = None, log=print) -> str | None:
    """UEFI: hearth-0-committed.conf names the running (healthy) slot, written from the slot's own entry."""
    slot = current_slot(cmdline)
    edir = os.path.join(boot, "loader", "entries")
    if not os.path.isdir(edir) or fallback_slot(boot) == slot:
        return None
    source = next((e["file"] for e in entries(boot) if e["slot"] == slot), None)
    if source is None:
        log(f"hearth: no loader entry for slot {slot} in {edir}; the fallback entry is left as it is")
        return None
    with open(os.path.join(edir, source), errors="replace") as f:
        text = f.read()
    try:
        switch_slot(text, slot, slot)       # an entry Hearth wrote (it names the slot), else it is not copied
    except UpdateError:
        log(f"hearth: {source} is not an entry Hearth wrote; the fallback entry is left as it is")
        return None
    try:
        write_atomic(os.path.join(edir, FALLBACK), fallback_entry(text, slot).encode())
    except OSError as exc:            # the boot was healthy all the same: no reboot over the fallback entry
        log(f"hearth: could not write the fallback entry {FALLBACK} ({exc}); it still names the previous slot")
        return None
    log(f"hearth: slot {slot} committed (the fallback entry {FALLBACK} boots it when no other entry can)")
    return slot


def booted_entry(path: str = ENTRY_SELECTED) -> str | None:
    """The loader entry systemd-boot booted (its EFI variable: 4 bytes of attributes, then UTF-16), or None."""
    try:
        with open(path, "rb") as f:
            return f.read()[4:].decode("utf-16-le").rstrip("\0") or None
    except (OSError, UnicodeDecodeError):
        return None


def status(boot: str = BOOT, cmdline: str | None = None) -> dict:
    """The running slot and what boots next: loader entries (systemd-boot) or config.txt/tryboot.txt (Pi)."""
    out = {"slot": current_slot(cmdline)}
    if is_raspi(boot):
        trial = _prefix(os.path.join(boot, "tryboot.txt"))
        out["entries"] = [{"slot": raspi_committed(boot), "state": "good", "file": "config.txt"}]
        if trial:
            out["entries"].insert(0, {"slot": trial, "state": "trial", "file": "tryboot.txt"})
    else:
        out["entries"] = entries(boot)
        committed = fallback_slot(boot)
        if committed:
            out["entries"].append({"file": FALLBACK, "slot": committed, "state": "fallback"})
        out["booted_entry"] = booted_entry()
    try:
        out["version_floor"] = read_versions(boot).get("floor")
    except UpdateError as exc:
        out["version_floor"] = None
        out["version_floor_error"] = str(exc)
    return out


def entry_for(target: str, active: str, existing: list[dict], edir: str) -> str:
    """The new slot's loader entry: the running slot's, with the slot changed (same console and options). Where
    the running slot's own entry is gone or unreadable (it booted through the fallback entry), the fallback's."""
    mine = next((e for e in existing if e["slot"] == active), None)
    text = ""
    if mine is not None:
        with open(os.path.join(edir, mine["file"]), errors="replace") as f:
            text = f.read()
    if f"hearth.slot={active}" not in text and fallback_slot(os.path.dirname(os.path.dirname(edir))) == active:
        mine = {"file": FALLBACK}
        with open(os.path.join(edir, FALLBACK)) as f:
            text = f.read()
    if mine is None:
        raise UpdateError(f"no loader entry for the running slot {active} in {edir}")
    text = re.sub(r"^title .*$", f"title Hearth (slot {active})", text, count=1, flags=re.M)
    text = re.sub(rf"\(slot {active}\)", f"(slot {target})", text)
    text = re.sub(rf"/{active}/(vmlinuz|initrd\.img)", rf"/{target}/\1", text)
    try:
        return switch_slot(text, active, target)
    except UpdateError:
        raise UpdateError(f"the running slot's entry {mine['file']} is not one Hearth wrote") from None


def health(status, timeout: float, restarts=None, max_restarts: int = 3) -> None:
    """Wait until status() (the agent's, over its control socket) answers with a serving node; give up early
    when restarts() (how often systemd restarted the agent) reaches max_restarts: it is failing, not slow."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if restarts is not None and restarts() >= max_restarts:
            raise UpdateError(f"the agent failed {max_restarts} times in a row ({last})")
        try:
            st = status()
            if st.get("endpoint") and st.get("node"):
                return
            last = f"not serving yet: {st}"
        except (OSError, ConnectionError, ValueError) as exc:
            last = str(exc)
        time.sleep(1)
    raise UpdateError(f"the agent did not report healthy within {timeout:.0f} s ({last})")
