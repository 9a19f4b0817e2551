"""The A/B slot contract: the boot configuration the image builder writes for slot a and that the device's
updates read and rewrite for the other slot. Pure functions, text in and text out (no file is touched here),
so the builder and the device cannot drift apart.

Two boot loaders keep it:
- systemd-boot (UEFI): one loader entry per slot, `hearth-N-SLOT[+LEFT[-DONE]].conf` (generation N; the boot
  counter in the name while the slot is on trial), and `hearth-0-committed.conf`, which always names the
  committed slot. systemd-boot picks the first entry matching loader.conf's `default` in its sorted list: newest
  generation first, and any entry whose tries are used up last. So a new slot's entry (hearth-N-b+3.conf) boots
  first, and after three failed trials the previous slot's entry does. The fallback (generation 0: after every
  other usable entry) boots when the other entries are gone or unreadable.
- The Raspberry Pi's firmware: config.txt on the FAT partition names the committed slot's directory
  (`os_prefix=a/`: its kernel, initramfs, cmdline.txt and device trees); tryboot.txt, when present, names the
  slot on trial, and `reboot "0 tryboot"` makes the next boot, once, read it instead.
Every slot's kernel command line says `hearth.slot=SLOT`: that is how a running system knows its slot.
"""

import re

from edge.errors import EdgeError

SLOTS = ("a", "b")
TRIES = 3
FALLBACK = "hearth-0-committed.conf"
ENTRY_RE = re.compile(r"hearth-(\d+)-([ab])(?:\+(\d+)(?:-(\d+))?)?\.conf")
LOADER_CONF = "default hearth-*\ntimeout 0\nconsole-mode keep\neditor no\n"
# config.txt's os_prefix is the committed slot; tryboot.txt's, when present, the one on trial
PREFIX_RE = re.compile(r"^os_prefix=([ab])/\s*$", re.M)
RASPI_CONFIG = """# Hearth ({board}): the firmware boots the slot named by os_prefix. Written by Hearth's updates.
[all]
arm_64bit=1
enable_uart=1
upstream_kernel=1
disable_overscan=1
os_prefix={slot}/
kernel=vmlinuz
initramfs initrd.img followkernel
"""


class UpdateError(EdgeError):
    """An update refused, or a boot configuration that is not one Hearth wrote."""


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def partition_number(slot: str) -> int:
    """Slot a is partition 2 and slot b partition 3 (the boot partition is 1, the data partition 4)."""
    return {"a": 2, "b": 3}[slot]


# the kernel command line ----------------------------------------------------------------------------------

def current_slot(cmdline: str) -> str:
    """The slot a kernel command line booted (its hearth.slot=)."""
    m = re.search(r"\bhearth\.slot=([ab])\b", cmdline)
    if not m:
        raise UpdateError("this system was not booted from a Hearth slot (no hearth.slot= on the kernel command "
                          "line); updates install only on Hearth images")
    return m.group(1)


def slot_device(slot: str, cmdline: str) -> str:
    """The block device of a root slot, found the way the running kernel found its root: by GPT partition name
    (root=PARTLABEL=root-a) or, on MBR disks, by partition UUID (root=PARTUUID=<disk id>-02 for a, -03 for b)."""
    m = re.search(r"\broot=PARTUUID=([0-9a-f]{8})-0[23]\b", cmdline)
    if m:
        return f"/dev/disk/by-partuuid/{m.group(1)}-0{partition_number(slot)}"
    return f"/dev/disk/by-partlabel/root-{slot}"


def switch_slot(text: str, active: str, target: str) -> str:
    """A kernel command line (or loader entry) of slot `active`, rewritten for slot `target`."""
    text = text.replace(f"root=PARTLABEL=root-{active}", f"root=PARTLABEL=root-{target}")
    text = re.sub(r"\b(root=PARTUUID=[0-9a-f]{8})-0[23]\b", rf"\g<1>-0{partition_number(target)}", text)
    text = text.replace(f"hearth.slot={active}", f"hearth.slot={target}")
    if f"hearth.slot={target}" not in text:
        raise UpdateError("the running slot's boot configuration is not one Hearth wrote (no hearth.slot=)")
    return text


# systemd-boot ---------------------------------------------------------------------------------------------

def loader_entry(slot: str, console: str) -> str:
    """The loader entry the image is built with for `slot`."""
    return (f"title Hearth (slot {slot})\nlinux /{slot}/vmlinuz\ninitrd /{slot}/initrd.img\n"
            f"options root=PARTLABEL=root-{slot} ro rootwait console=tty0 console={console} "
            f"systemd.show_status=1 hearth.slot={slot}\n")


def entry_name(generation: int, slot: str, tries: int | None = None) -> str:
    """hearth-N-SLOT.conf, or with the boot counter of a slot on trial, hearth-N-SLOT+TRIES.conf."""
    return f"hearth-{generation}-{slot}" + ("" if tries is None else f"+{tries}") + ".conf"


def parse_entry_name(name: str) -> dict | None:
    """A loader entry's file name as {"file", "generation", "slot", "tries_left", "tries_done", "state"} (good,
    trial, or bad: its tries used up), or None when it is not a slot entry (the fallback's name is not one)."""
    m = ENTRY_RE.fullmatch(name)
    if not m:
        return None
    left = None if m.group(3) is None else int(m.group(3))
    return {"file": name, "generation": int(m.group(1)), "slot": m.group(2), "tries_left": left,
            "tries_done": int(m.group(4) or 0), "state": "good" if left is None else ("bad" if left == 0 else "trial")}


def entry_slot(text: str) -> str | None:
    """The slot a loader entry boots (the hearth.slot= on its options line), or None if it names none."""
    m = re.search(r"^options .*\bhearth\.slot=([ab])\b", text, re.M)
    return m.group(1) if m else None


def fallback_entry(text: str, slot: str) -> str:
    """The committed slot's fallback entry: its own entry's text, titled as the fallback."""
    title = f"title Hearth (slot {slot}, committed: fallback)"
    return re.sub(r"^title .*$", title, text, count=1, flags=re.M) if re.search(r"^title ", text, re.M) \
        else f"{title}\n{text}"


def entry_for(text: str, active: str, target: str) -> str:
    """Slot `target`'s loader entry from slot `active`'s (or from the fallback naming it): same console and
    options, the slot's own title, kernel, initramfs and root. UpdateError if the text names no Hearth slot."""
    text = re.sub(r"^title .*$", f"title Hearth (slot {active})", text, count=1, flags=re.M)
    text = re.sub(rf"\(slot {active}\)", f"(slot {target})", text)
    text = re.sub(rf"/{active}/(vmlinuz|initrd\.img)", rf"/{target}/\1", text)
    return switch_slot(text, active, target)


# the Raspberry Pi's firmware -------------------------------------------------------------------------------

def raspi_config(board: str, slot: str) -> str:
    """config.txt as the image is built: slot `slot` committed."""
    return RASPI_CONFIG.format(board=board, slot=slot)


def raspi_cmdline(slot: str, console: str, disk_id: str) -> str:
    """A slot's cmdline.txt; disk_id is the MBR disk signature (mbr_id), so the root is PARTUUID=ID-02 or -03."""
    return (f"console=tty0 console={console} root=PARTUUID={disk_id}-{partition_number(slot):02d} ro rootwait "
            f"systemd.show_status=1 hearth.slot={slot}\n")


def mbr_id(disk_uuid: str) -> str:
    """The MBR disk signature (8 hex digits) sfdisk writes for this disk id; PARTUUIDs are ID-NN."""
    return disk_uuid.replace("-", "")[:8].lower()


def config_slot(config: str) -> str | None:
    """The slot config.txt (or tryboot.txt) names with os_prefix, or None."""
    m = PREFIX_RE.search(config)
    return m.group(1) if m else None


def raspi_config_for(config: str, slot: str) -> str:
    """config.txt (or tryboot.txt) rewritten to boot `slot`, everything else kept."""
    if not PREFIX_RE.search(config):
        raise UpdateError("config.txt names no Hearth slot (os_prefix=a/ or b/); it is not one Hearth wrote")
    return PREFIX_RE.sub(f"os_prefix={slot}/", config)
