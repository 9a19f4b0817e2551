"""The boot loader's side of an install, chosen once per boot partition: systemd-boot's entries with boot
counting (UEFI), or the Raspberry Pi firmware's config.txt and tryboot.txt. Each says whether the running slot
is committed, makes the inactive slot unbootable before it is written, arms the new slot last, commits a
healthy slot, and lists what boots next. The texts are edge/provisioning/slots.py's.
"""

import os

from edge.atomic import fsync_dir, write_atomic
from edge.provisioning import slots
from edge.provisioning.slots import FALLBACK, TRIES, UpdateError

BOOT = "/efi"
# systemd-boot's record of the entry it booted (the loader interface's vendor GUID)
ENTRY_SELECTED = "/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def kernel_cmdline(cmdline: str | None = None) -> str:
    if cmdline is None:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    return cmdline


def current_slot(cmdline: str | None = None) -> str:
    return slots.current_slot(kernel_cmdline(cmdline))


def is_raspi(boot: str = BOOT) -> bool:
    return os.path.exists(os.path.join(boot, "config.txt"))


def loader_for(boot: str = BOOT) -> "BootLoader":
    """The boot loader this boot partition is laid out for (a Pi's firmware reads config.txt)."""
    return PiTryboot(boot) if is_raspi(boot) else SystemdBoot(boot)


class BootLoader:
    """Steps 2 and 5 of an install (see edge/provisioning/device/update.py), the commit and the status."""

    name = ""

    def __init__(self, boot: str):
        self.boot = boot

    def prepare(self, active: str, target: str):
        """Before anything is written: refuse while the running slot is on trial (not committed yet), and read
        what the next steps work from (an install calls prepare, disarm, slot_files and arm in this order)."""
        raise NotImplementedError

    def disarm(self, target: str):
        """Step 2: nothing in the boot configuration points at slot `target` any more (durably)."""
        raise NotImplementedError

    def slot_files(self, active: str, target: str) -> dict[str, bytes]:
        """Step 4: what slot `target`'s directory needs besides the bundle's kernel and initramfs."""
        return {}

    def arm(self, active: str, target: str) -> str:
        """Step 5, last: from here the next boot tries slot `target`. Returns the file written."""
        raise NotImplementedError

    def armed(self, version: str, active: str, target: str, entry: str) -> str:
        """What the install says once the slot is armed."""
        raise NotImplementedError

    def commit(self, slot: str, log) -> str | None:
        """After a healthy boot of `slot`: it is the one that boots from now on. The slot, or None if it was."""
        raise NotImplementedError

    def entries(self) -> list[dict]:
        """What boots next, first first: {"file", "slot", "state"} (and more where the loader has it)."""
        raise NotImplementedError

    def reboot_command(self) -> list[str]:
        """The reboot that tries an armed slot: systemd-boot counts tries by itself on any reboot."""
        return ["systemctl", "reboot"]


class SystemdBoot(BootLoader):
    """UEFI: an entry per slot, boot counting in the entry's name; hearth-0-committed.conf names the committed
    slot. An install never touches the fallback, and installs only when the running slot is the committed one,
    so the fallback never names the slot being written."""

    name = "systemd-boot"

    def __init__(self, boot: str):
        super().__init__(boot)
        self.edir = os.path.join(boot, "loader", "entries")
        self.generation = 0

    def slot_entries(self) -> list[dict]:
        """Hearth's slot entries, newest generation first."""
        out = []
        for name in sorted(os.listdir(self.edir)) if os.path.isdir(self.edir) else []:
            entry = slots.parse_entry_name(name)
            if entry:
                out.append(entry)
        return sorted(out, key=lambda e: -e["generation"])

    def fallback_slot(self) -> str | None:
        """The slot hearth-0-committed.conf names, or None when it is missing or not one Hearth wrote."""
        try:
            with open(os.path.join(self.edir, FALLBACK), errors="replace") as f:
                return slots.entry_slot(f.read())
        except OSError:
            return None

    def prepare(self, active: str, target: str):
        self.existing = self.slot_entries()
        committed = self.fallback_slot()
        mine = [e for e in self.existing if e["slot"] == active]
        if committed not in (None, active) or (committed is None and mine and mine[0]["state"] != "good"):
            raise UpdateError(f"slot {active} is running on trial and not committed yet (slot "
                              f"{committed or target} is the committed one); install the next update once it is")
        self.generation = max((e["generation"] for e in self.existing), default=0) + 1

    def disarm(self, target: str):
        for e in self.existing:
            if e["slot"] == target:
                os.unlink(os.path.join(self.edir, e["file"]))
        fsync_dir(self.edir)

    def arm(self, active: str, target: str) -> str:
        entry = slots.entry_name(self.generation, target, TRIES)
        write_atomic(os.path.join(self.edir, entry), self.entry_for(active, target).encode())
        return entry

    def armed(self, version: str, active: str, target: str, entry: str) -> str:
        return (f"installed {version} in slot {target}; it boots on trial next time ({entry}) and is "
                "committed when the node reports healthy, else slot " + active + " comes back by itself")

    def entry_for(self, active: str, target: str) -> str:
        """The new slot's loader entry: the running slot's, with the slot changed (same console and options).
        Where the running slot's own entry is gone or unreadable (it booted through the fallback), the
        fallback's."""
        mine = next((e for e in self.existing if e["slot"] == active), None)
        text = ""
        if mine is not None:
            with open(os.path.join(self.edir, mine["file"]), errors="replace") as f:
                text = f.read()
        if f"hearth.slot={active}" not in text and self.fallback_slot() == active:
            mine = {"file": FALLBACK}
            with open(os.path.join(self.edir, FALLBACK)) as f:
                text = f.read()
        if mine is None:
            raise UpdateError(f"no loader entry for the running slot {active} in {self.edir}")
        try:
            return slots.entry_for(text, active, target)
        except UpdateError:
            raise UpdateError(f"the running slot's entry {mine['file']} is not one Hearth wrote") from None

    def commit(self, slot: str, log) -> str | None:
        """systemd-bless-boot marks the healthy slot's entry good; here the fallback entry is made to name it,
        written from the slot's own entry."""
        if not os.path.isdir(self.edir) or self.fallback_slot() == slot:
            return None
        source = next((e["file"] for e in self.slot_entries() if e["slot"] == slot), None)
        if source is None:
            log(f"hearth: no loader entry for slot {slot} in {self.edir}; the fallback entry is left as it is")
            return None
        with open(os.path.join(self.edir, source), errors="replace") as f:
            text = f.read()
        try:
            slots.switch_slot(text, slot, slot)   # an entry Hearth wrote (it names the slot), else it is not copied
        except UpdateError:
            log(f"hearth: {source} is not an entry Hearth wrote; the fallback entry is left as it is")
            return None
        try:
            write_atomic(os.path.join(self.edir, FALLBACK), slots.fallback_entry(text, slot).encode())
        except OSError as exc:        # the boot was healthy all the same: no reboot over the fallback entry
            log(f"hearth: could not write the fallback entry {FALLBACK} ({exc}); it still names the previous slot")
            return None
        log(f"hearth: slot {slot} committed (the fallback entry {FALLBACK} boots it when no other entry can)")
        return slot

    def entries(self) -> list[dict]:
        out = self.slot_entries()
        committed = self.fallback_slot()
        if committed:
            out.append({"file": FALLBACK, "slot": committed, "state": "fallback"})
        return out


class PiTryboot(BootLoader):
    """The Raspberry Pi's firmware: config.txt's os_prefix is the committed slot; tryboot.txt names the slot on
    trial, and `reboot "0 tryboot"` boots it once. A failed trial, a crash or a power cut boots config.txt's slot
    again, because the firmware's tryboot flag lasts one boot."""

    name = "raspi-firmware"

    def reboot_command(self) -> list[str]:
        # the firmware boots tryboot.txt's slot only on a tryboot reboot, once
        return ["systemctl", "reboot", "0 tryboot"]

    def __init__(self, boot: str):
        super().__init__(boot)
        self.config = os.path.join(boot, "config.txt")
        self.tryboot = os.path.join(boot, "tryboot.txt")

    def committed(self) -> str:
        slot = _prefix(self.config)
        if slot is None:
            raise UpdateError(f"{self.boot}/config.txt names no Hearth slot (os_prefix=a/ or b/)")
        return slot

    def prepare(self, active: str, target: str):
        committed = self.committed()
        if committed != active:
            raise UpdateError(f"slot {active} is running on trial and not committed yet (config.txt still boots "
                              f"slot {committed}); install the next update once it is")

    def disarm(self, target: str):
        if os.path.exists(self.tryboot):
            os.unlink(self.tryboot)
        fsync_dir(self.boot)

    def slot_files(self, active: str, target: str) -> dict[str, bytes]:
        with open(os.path.join(self.boot, active, "cmdline.txt")) as f:
            return {"cmdline.txt": slots.switch_slot(f.read(), active, target).encode()}

    def arm(self, active: str, target: str) -> str:
        with open(self.config) as f:
            write_atomic(self.tryboot, slots.raspi_config_for(f.read(), target).encode())
        return "tryboot.txt"

    def armed(self, version: str, active: str, target: str, entry: str) -> str:
        return (f"installed {version} in slot {target}; `hearth update apply --reboot` (or "
                f"`systemctl reboot \"0 tryboot\"`) boots it on trial; it is committed when the node reports healthy, "
                f"and any other boot comes back to slot {active}")

    def commit(self, slot: str, log) -> str | None:
        """config.txt names the healthy slot and tryboot.txt goes."""
        if self.committed() == slot:
            return None
        with open(self.config) as f:
            text = f.read()
        write_atomic(self.config, slots.raspi_config_for(text, slot).encode())
        if os.path.exists(self.tryboot):
            os.unlink(self.tryboot)
            fsync_dir(self.boot)
        log(f"hearth: slot {slot} committed (config.txt boots it from now on)")
        return slot

    def entries(self) -> list[dict]:
        out = [{"slot": self.committed(), "state": "good", "file": "config.txt"}]
        trial = _prefix(self.tryboot)
        if trial:
            out.insert(0, {"slot": trial, "state": "trial", "file": "tryboot.txt"})
        return out


def _prefix(path: str) -> str | None:
    try:
        with open(path) as f:
            return slots.config_slot(f.read())
    except FileNotFoundError:
        return None


def entries(boot: str = BOOT) -> list[dict]:
    """systemd-boot's slot entries on this boot partition, newest generation first."""
    return SystemdBoot(boot).slot_entries()


def fallback_slot(boot: str = BOOT) -> str | None:
    """The slot hearth-0-committed.conf names, or None when it is missing or not one Hearth wrote."""
    return SystemdBoot(boot).fallback_slot()


def booted_entry(path: str = ENTRY_SELECTED) -> str | None:
    """The loader entry systemd-boot booted (its EFI variable: 4 bytes of attributes, then UTF-16), or None."""
    try:
        with open(path, "rb") as f:
            return f.read()[4:].decode("utf-16-le").rstrip("\0") or None
    except (OSError, UnicodeDecodeError):
        return None
