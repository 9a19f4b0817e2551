"""The A/B slot contract (edge/provisioning/slots.py) as golden texts: what the image builder writes for slot a,
and what the device's updates make of it for slot b and back. A change to any of these texts changes what
devices in the field read: it must be deliberate, here and in the code at once."""

import pytest

from edge.images.bootfiles import generated
from edge.images.recipe import load
from edge.provisioning import slots
from edge.provisioning.slots import UpdateError

ENTRY_A = """title Hearth (slot a)
linux /a/vmlinuz
initrd /a/initrd.img
options root=PARTLABEL=root-a ro rootwait console=tty0 console=ttyS0,115200 systemd.show_status=1 hearth.slot=a
"""
ENTRY_B = """title Hearth (slot b)
linux /b/vmlinuz
initrd /b/initrd.img
options root=PARTLABEL=root-b ro rootwait console=tty0 console=ttyS0,115200 systemd.show_status=1 hearth.slot=b
"""
FALLBACK_A = """title Hearth (slot a, committed: fallback)
linux /a/vmlinuz
initrd /a/initrd.img
options root=PARTLABEL=root-a ro rootwait console=tty0 console=ttyS0,115200 systemd.show_status=1 hearth.slot=a
"""
LOADER_CONF = """default hearth-*
timeout 0
console-mode keep
editor no
"""
CONFIG_A = """# Hearth (rpi4): the firmware boots the slot named by os_prefix. Written by Hearth's updates.
[all]
arm_64bit=1
enable_uart=1
upstream_kernel=1
disable_overscan=1
os_prefix=a/
kernel=vmlinuz
initramfs initrd.img followkernel
"""
CMDLINE_A = ("console=tty0 console=ttyS1,115200 root=PARTUUID=5c0f2c4e-02 ro rootwait systemd.show_status=1 "
             "hearth.slot=a\n")
CMDLINE_B = ("console=tty0 console=ttyS1,115200 root=PARTUUID=5c0f2c4e-03 ro rootwait systemd.show_status=1 "
             "hearth.slot=b\n")
DISK = "5c0f2c4e-7d0b-4e43-9b3a-6b0d3f1e2a11"


def test_systemd_boot_texts_as_the_image_is_built():
    assert slots.LOADER_CONF == LOADER_CONF
    assert slots.loader_entry("a", "ttyS0,115200") == ENTRY_A
    assert slots.fallback_entry(ENTRY_A, "a") == FALLBACK_A
    assert slots.entry_name(1, "a") == "hearth-1-a.conf" and slots.entry_name(7, "b", 3) == "hearth-7-b+3.conf"
    assert generated(load("x86-64"), DISK) == {"loader/loader.conf": LOADER_CONF,
                                                "loader/entries/hearth-1-a.conf": ENTRY_A,
                                                "loader/entries/hearth-0-committed.conf": FALLBACK_A}


def test_an_update_rewrites_slot_a_entry_for_b_and_back():
    assert slots.entry_for(ENTRY_A, "a", "b") == ENTRY_B
    assert slots.entry_for(ENTRY_B, "b", "a") == ENTRY_A
    # from the fallback (the running slot's own entry lost): the slot's own title again
    assert slots.entry_for(FALLBACK_A, "a", "b") == ENTRY_B
    assert slots.fallback_entry(ENTRY_B, "b") == FALLBACK_A.replace("slot a", "slot b").replace("/a/", "/b/") \
        .replace("root-a", "root-b").replace("slot=a", "slot=b")
    assert slots.entry_slot(FALLBACK_A) == "a" and slots.entry_slot("title x\noptions quiet\n") is None
    with pytest.raises(UpdateError, match="not one Hearth wrote"):
        slots.entry_for("title Something else\noptions root=/dev/sda2\n", "a", "b")


def test_entry_names_carry_generation_slot_and_boot_counter():
    assert slots.parse_entry_name("hearth-2-b+3.conf") == {
        "file": "hearth-2-b+3.conf", "generation": 2, "slot": "b", "tries_left": 3, "tries_done": 0, "state": "trial"}
    assert slots.parse_entry_name("hearth-2-b+2-1.conf")["tries_done"] == 1
    assert slots.parse_entry_name("hearth-2-b+0-3.conf")["state"] == "bad"
    assert slots.parse_entry_name("hearth-1-a.conf")["state"] == "good"
    for name in (slots.FALLBACK, "hearth-1-c.conf", "other.conf", "hearth-1-a.conf~"):
        assert slots.parse_entry_name(name) is None


def test_raspberry_pi_texts_as_the_image_is_built():
    assert slots.raspi_config("rpi4", "a") == CONFIG_A
    assert slots.mbr_id(DISK) == "5c0f2c4e"
    assert slots.raspi_cmdline("a", "ttyS1,115200", "5c0f2c4e") == CMDLINE_A
    assert generated(load("rpi4"), DISK) == {"config.txt": CONFIG_A, "a/cmdline.txt": CMDLINE_A}


def test_an_update_rewrites_the_pi_files_for_b_and_back():
    assert slots.switch_slot(CMDLINE_A, "a", "b") == CMDLINE_B
    assert slots.switch_slot(CMDLINE_B, "b", "a") == CMDLINE_A
    tryboot = slots.raspi_config_for(CONFIG_A, "b")
    assert tryboot == CONFIG_A.replace("os_prefix=a/", "os_prefix=b/")
    assert slots.config_slot(CONFIG_A) == "a" and slots.config_slot(tryboot) == "b"
    assert slots.config_slot("[all]\narm_64bit=1\n") is None
    with pytest.raises(UpdateError, match="names no Hearth slot"):
        slots.raspi_config_for("[all]\narm_64bit=1\n", "b")
    with pytest.raises(UpdateError, match="no hearth.slot="):
        slots.switch_slot("console=tty0 root=/dev/mmcblk0p2\n", "a", "b")


def test_the_running_slot_and_its_devices_come_from_the_kernel_command_line():
    assert slots.current_slot(CMDLINE_B) == "b"
    assert slots.current_slot(ENTRY_A.splitlines()[-1]) == "a"
    with pytest.raises(UpdateError, match="not booted from a Hearth slot"):
        slots.current_slot("root=/dev/sda1 quiet")
    assert slots.slot_device("b", CMDLINE_A) == "/dev/disk/by-partuuid/5c0f2c4e-03"
    assert slots.slot_device("a", CMDLINE_B) == "/dev/disk/by-partuuid/5c0f2c4e-02"
    assert slots.slot_device("b", ENTRY_A) == "/dev/disk/by-partlabel/root-b"
