"""Signed A/B updates on the device: install to the other root slot, boot it on trial, commit when healthy, else
roll back. The bundle's format is edge/provisioning/bundle.py's; the host makes it (edge/provisioning/host/).

The project's own format rather than RAUC's: one Ed25519 key signs images, seeds and bundles alike, and the
trial boot and rollback come from the boot loader's own mechanism (systemd-boot's boot counting, already in
Debian's systemd; the Raspberry Pi firmware's tryboot), with no daemon. The boot loader's part of each step is
edge/provisioning/device/bootloader.py's, chosen once per boot partition.

Install order, so that a power cut at any moment leaves a slot that boots:
  1. before anything is written: the signature; the board (the bundle's must be the running image's, which
     /etc/hearth/image.json in the read-only root records); the version floor (versions.py); and every file's
     SHA-256, by reading the whole bundle once (payload.py);
  2. the inactive slot stops being bootable: every loader entry of it is deleted (UEFI), or tryboot.txt (Pi);
  3. the root file system is written to the inactive partition (around the page cache), flushed, read back from
     the disk and compared with the manifest's signed hash of the root;
  4. its kernel and initramfs are written to the boot partition (temporary name, flush, rename), on a Pi also
     its device trees and cmdline.txt;
  5. last, the boot loader is armed (temporary name, flush, rename): systemd-boot's `hearth-N-SLOT+3.conf`, from
     which moment the next boot tries the new slot, at most three times (hearth-health.service's success lets
     systemd-bless-boot drop the counter; three failures make the bootloader boot the old slot); or the Pi's
     tryboot.txt naming the new slot, which `reboot "0 tryboot"` boots once.
On UEFI one more entry, hearth-0-committed.conf, always names the committed slot: the image is built with it
naming slot a, and a healthy boot (commit()) makes it name the running slot. It sorts after every generation's
entry and before any whose tries are used up, so systemd-boot picks it only when no other entry is usable: the
entries removed, unreadable, or all bad (loader.conf's `default hearth-*` matches it too). On a Pi the health
check commits by rewriting config.txt.
"""

import hashlib
import os
import subprocess
import tarfile
import threading
import time

from edge.atomic import write_atomic
from edge.provisioning.bundle import CHUNK, OPTIONAL, ORDER
from edge.provisioning.device.bootloader import BOOT, booted_entry, current_slot, kernel_cmdline, loader_for
from edge.provisioning.device.payload import read_signed, reopen, stream_member, trusted_keys, verify_payload, \
    write_devicetrees
from edge.provisioning.device.versions import (IMAGE_INFO, check_bundle, raise_floor, read_versions, running_image,
                                               write_versions)
from edge.provisioning.diskio import sha256_of_medium, write_stream
from edge.provisioning.slots import UpdateError, other, slot_device


def apply(bundle: str, *, boot: str = BOOT, trusted: list[str] | None = None, device_for=None, cmdline=None,
          log=print, pause_after_root=None, image_info: str = IMAGE_INFO, allow_debug: bool = False) -> dict:
    """Install bundle to the inactive slot; returns {"slot", "version", "entry"}."""
    trusted = trusted_keys() if trusted is None else trusted
    with open(bundle, "rb") as f:
        manifest, body = read_signed(f, bundle, trusted)
        check_bundle(manifest, running_image(image_info), boot, allow_debug=allow_debug, image_info=image_info)
        return _install(f, body, manifest, boot=boot, device_for=device_for, cmdline=cmdline, log=log,
                        pause_after_root=pause_after_root)


def _install(f, body, manifest, *, boot, device_for, cmdline, log, pause_after_root) -> dict:
    cmdline = kernel_cmdline(cmdline)
    active = current_slot(cmdline)
    target = other(active)
    device = (device_for or (lambda s: slot_device(s, cmdline)))(target)
    loader = loader_for(boot)
    loader.prepare(active, target)
    # 1. every file of the bundle checked against the signed manifest, before anything is written
    log(f"checking {manifest['version']} ({manifest['board']}) against its signed manifest")
    small = verify_payload(f, body, manifest)
    _check_room(device, manifest["root_size"], target)
    state = read_versions(boot)
    # 2. the inactive slot stops being bootable before it is touched
    loader.disarm(target)
    # what the slot will hold: commit() makes it the floor once it has booted healthy
    state.setdefault("slots", {})[target] = manifest["version"]
    write_versions(boot, state)
    log(f"installing {manifest['version']} into slot {target} ({device})")
    # 3. the root file system, decompressed on the way into the partition, then read back
    _write_root(f, body, manifest, device, active, target)
    if pause_after_root:
        pause_after_root()
    # 4. kernel and initramfs (and, on a Pi, the device trees and the kernel command line)
    sdir = os.path.join(boot, target)
    os.makedirs(sdir, exist_ok=True)
    for name in [n for n in ORDER[3:] + OPTIONAL if n in manifest["files"]]:
        data = small[name]                    # the bytes checked in step 1
        if name == "devicetrees.tar":
            write_devicetrees(data, sdir)
        else:
            write_atomic(os.path.join(sdir, name), data)
    for name, data in loader.slot_files(active, target).items():
        write_atomic(os.path.join(sdir, name), data)
    # 5. the boot loader armed, last: from here the next boot (a Pi's next tryboot) tries the new slot
    entry = loader.arm(active, target)
    log(loader.armed(manifest["version"], active, target, entry))
    return {"slot": target, "version": manifest["version"], "entry": entry}


def _check_room(device: str, root_size: int, target: str):
    """UpdateError, before anything is written, when the slot's partition is smaller than the bundle's root
    (a bundle made for another partition layout)."""
    try:
        fd = os.open(device, os.O_RDONLY)
    except OSError as exc:
        raise UpdateError(f"slot {target}'s partition {device} cannot be opened ({exc.strerror}); nothing was "
                          "written") from None
    try:
        room = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    if room < root_size:
        raise UpdateError(f"the bundle's root file system is {root_size} bytes and slot {target}'s partition "
                          f"({device}) holds {room}: it was made for another partition layout; nothing was written")


def _write_root(f, body: bytes, manifest: dict, device: str, active: str, target: str):
    """Step 3: the bundle's root file system, decompressed into the slot's partition, flushed, read back from
    the disk (edge/provisioning/diskio.py) and compared with the signed hash of the root (a bundle made before
    bundles carried it: with the hash of what was decompressed)."""
    try:
        tar = reopen(f, body)
        src = stream_member(tar, "root.img.zst", manifest["files"]["root.img.zst"])
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError(f"the bundle became unreadable while it was installed ({exc}); slot {target} is left "
                          f"unbootable and slot {active} stays in use") from None
    zstd = subprocess.Popen(["zstd", "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    h_in = hashlib.sha256()
    signed_root = manifest.get("root_sha256")
    h_out = None if signed_root else hashlib.sha256()
    fd = os.open(device, os.O_RDWR)
    try:
        def feed():
            try:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    h_in.update(chunk)
                    zstd.stdin.write(chunk)
            except BrokenPipeError:     # zstd stopped reading: its exit status says why
                pass
            finally:
                try:
                    zstd.stdin.close()
                except BrokenPipeError:
                    pass
        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            written = write_stream(zstd.stdout, fd, h_out)
        finally:
            zstd.stdout.close()
            feeder.join()
            zstd.wait()
        if h_in.hexdigest() != manifest["files"]["root.img.zst"]["sha256"]:
            raise UpdateError("the bundle changed while it was installed (its root file system no longer matches "
                              f"the signed hash it had when checked); slot {target} is left unbootable and slot "
                              f"{active} stays in use")
        if zstd.returncode != 0 or written != manifest["root_size"]:
            raise UpdateError(f"the root file system decompressed to {written} bytes, not {manifest['root_size']}"
                              f"{' (zstd failed)' if zstd.returncode else ''}; slot {target} is left unbootable")
        back, _ = sha256_of_medium(fd, written)
    finally:
        os.close(fd)
    if signed_root and back != signed_root:
        raise UpdateError(f"slot {target} does not read back as the signed root file system after it was written "
                          "(a failing disk, or a bundle made wrong); it stays unbootable")
    if h_out is not None and back != h_out.hexdigest():
        raise UpdateError(f"slot {target} did not read back as written (a failing disk?); it stays unbootable")


def commit(boot: str = BOOT, cmdline: str | None = None, log=print) -> str | None:
    """After a healthy boot: make the running slot the one that boots (on a Pi, config.txt names it and
    tryboot.txt goes; on UEFI systemd-bless-boot marks its entry good, and here the fallback entry is made to
    name it). Returns the slot committed, or None when there was nothing to commit. Either way the version
    floor becomes the running slot's version."""
    raise_floor(boot, cmdline, log)
    return loader_for(boot).commit(current_slot(cmdline), log)


def status(boot: str = BOOT, cmdline: str | None = None) -> dict:
    """The running slot and what boots next: loader entries (systemd-boot) or config.txt/tryboot.txt (Pi)."""
    out = {"slot": current_slot(cmdline)}
    loader = loader_for(boot)
    out["entries"] = loader.entries()
    if loader.name == "systemd-boot":
        out["booted_entry"] = booted_entry()
    try:
        out["version_floor"] = read_versions(boot).get("floor")
    except UpdateError as exc:
        out["version_floor"] = None
        out["version_floor_error"] = str(exc)
    return out


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
