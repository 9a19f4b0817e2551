"""Where a rollout's bundle is installed (config update_backend): the A/B slots, or a test device on files.

Both install through update.apply, so a bundle is checked exactly as `hearth update apply` checks it (its
signature by an update key, its board, the version floor, every file's SHA-256) before anything is written.

    ab    the real device: apply() to the inactive slot, then the boot loader's trial reboot (on a Hearth image
          through hearth-update.service, since the agent is not root: handoff.py); the agent that starts on the
          next boot tells from the slot it booted whether the trial took or the boot loader went back (rolled
          back)
    test  FOR TESTS ONLY: the same apply() into a device simulated on files under DATA_DIR/test-update/ (a
          systemd-boot partition, two slot files, image.json of board "test"; its update keys in
          update-keys there), since agents in a test cannot reboot. Its "reboot" is a simulated trial boot: the
          new slot boots and is committed, unless the bundle's signed manifest says "test_trial": "fail", in
          which case the simulated boot loader goes back to the old slot (a rollback).
"""

import json
import os
import subprocess

from edge.atomic import write_atomic
from edge.provisioning.device.bootloader import BOOT, current_slot, loader_for
from edge.provisioning.device.handoff import ask_reboot, hand_over
from edge.provisioning.device.payload import read_signed, trusted_keys
from edge.provisioning.device.update import apply, commit
from edge.provisioning.slots import UpdateError

BACKENDS = ("ab", "test")
TEST_ENTRY = ("title Hearth test device (slot a)\nlinux /a/vmlinuz\ninitrd /a/initrd.img\n"
              "options root=PARTLABEL=root-a ro hearth.slot=a\n")
TEST_SLOT_SIZE = 1 << 20     # bytes of each simulated slot (a test bundle's root is smaller)


class ABBackend:
    """The device's own A/B slots (edge/provisioning/device/update.py). On a Hearth image the agent is not root:
    it hands the bundle to hearth-update.service (edge/provisioning/device/handoff.py); run as root (a device
    of one's own) it installs and reboots itself."""

    name = "ab"
    reboots = True      # the trial boot is a real one: this process ends, the next boot reports

    def __init__(self, data_dir: str):
        self.data_dir = data_dir

    def install(self, path: str, log) -> dict:
        if os.geteuid() == 0:
            return apply(path, log=log)
        return hand_over(self.data_dir, path)

    def reboot(self) -> None:
        """Ask for the boot loader's trial reboot; systemd stops the agent on the way (this process ends)."""
        if os.geteuid() != 0:
            ask_reboot(self.data_dir)
            return
        command = loader_for(BOOT).reboot_command()
        try:
            r = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise UpdateError(f"could not reboot ({exc})") from None
        if r.returncode != 0:
            raise UpdateError(f"could not reboot: {' '.join(command)} said {r.stderr.strip()[:120]!r}")

    def booted_slot(self) -> str:
        return current_slot()


class TestBackend:
    """FOR TESTS ONLY: a device simulated on files; see the module's docstring."""

    name = "test"
    reboots = False     # the trial boot is simulated in reboot(): this process reports at once

    def __init__(self, data_dir: str):
        self.root = os.path.join(data_dir, "test-update")
        self.boot = os.path.join(self.root, "efi")
        self.image = os.path.join(self.root, "image.json")
        self.slot_file = os.path.join(self.root, "slot")
        self.keys = os.path.join(self.root, "update-keys")
        self._trial = ""
        entries = os.path.join(self.boot, "loader", "entries")
        if not os.path.isdir(entries):
            os.makedirs(entries)
            write_atomic(os.path.join(entries, "hearth-1-a.conf"), TEST_ENTRY.encode(), 0o644)
            write_atomic(self.image, json.dumps({"board": "test", "version": "1.0"}).encode(), 0o644)
            for slot in "ab":
                with open(self._device(slot), "wb") as f:
                    f.truncate(TEST_SLOT_SIZE)

    def _device(self, slot: str) -> str:
        return os.path.join(self.root, f"root-{slot}")

    def _cmdline(self) -> str:
        return f"ro hearth.slot={self.booted_slot()}"

    def booted_slot(self) -> str:
        try:
            with open(self.slot_file) as f:
                return f.read().strip() or "a"
        except FileNotFoundError:
            return "a"

    def install(self, path: str, log) -> dict:
        trusted = trusted_keys(self.keys)
        done = apply(path, boot=self.boot, trusted=trusted, device_for=self._device, cmdline=self._cmdline(),
                     log=log, image_info=self.image)
        with open(path, "rb") as f:   # what the simulated trial boot does: the signed manifest says
            manifest, _ = read_signed(f, path, trusted)
        self._trial = (done["slot"], manifest.get("test_trial", "ok"))
        return done

    def reboot(self) -> None:
        """The simulated trial boot: the new slot comes up and is committed, or the boot loader goes back."""
        if not self._trial:
            raise UpdateError("nothing was installed to boot on trial")
        slot, outcome = self._trial
        self._trial = ""
        if outcome == "fail":
            return                                   # the trial boot failed: the old slot boots again
        write_atomic(self.slot_file, slot.encode(), 0o644)
        commit(self.boot, self._cmdline(), log=lambda m: None)


def backend_for(name: str, data_dir: str):
    if name == "ab":
        return ABBackend(data_dir)
    if name == "test":
        return TestBackend(data_dir)
    raise UpdateError(f"update_backend {name!r} is not one of {', '.join(BACKENDS)}")
