"""The fallback loader entry (hearth-0-committed.conf) on files standing in for the boot partition and the root
slots: it always names the committed slot, an install never touches it nor runs while the running slot is on
trial, and an install from a slot whose own entry is lost takes the fallback's options. (QEMU boots the image
with its entries damaged and removed in test_ab_update.py.)"""

import os

import pytest

from edge.identity import Identity
from edge.provisioning.device.bootloader import booted_entry, entries, fallback_slot
from edge.provisioning.device.update import commit, status
from edge.provisioning.slots import FALLBACK, UpdateError, fallback_entry, loader_entry
from tests.test_update import device, install, make  # noqa: F401  (device: the fixture)


@pytest.fixture
def dev(device):
    """test_update's device as a new image has it: slot a's entry and the fallback naming slot a."""
    edir = os.path.join(device["boot"], "loader", "entries")
    with open(os.path.join(edir, FALLBACK), "w") as f:
        f.write(fallback_entry(loader_entry("a", "ttyS0,115200"), "a"))
    device["edir"] = edir
    return device


def names(dev):
    return sorted(os.listdir(dev["edir"]))


def test_the_image_has_a_fallback_naming_slot_a_and_installs_never_touch_it(tmp_path, dev):
    assert fallback_slot(dev["boot"]) == "a"
    key = Identity.generate()
    install(dev, make(tmp_path, key), key)
    assert names(dev) == [FALLBACK, "hearth-1-a.conf", "hearth-2-b+3.conf"]
    assert fallback_slot(dev["boot"]) == "a"                     # b is only on trial
    assert [e["file"] for e in entries(dev["boot"])] == ["hearth-2-b+3.conf", "hearth-1-a.conf"]
    st = status(dev["boot"], "hearth.slot=a")
    assert st["entries"][-1] == {"file": FALLBACK, "slot": "a", "state": "fallback"}


def test_an_install_while_on_trial_is_refused_and_removes_nothing(tmp_path, dev):
    key = Identity.generate()
    install(dev, make(tmp_path, key), key)
    dev["cmdline"] = "hearth.slot=b"                                 # b booted on trial, not healthy yet
    os.rename(os.path.join(dev["edir"], "hearth-2-b+3.conf"), os.path.join(dev["edir"], "hearth-2-b+2-1.conf"))
    before = names(dev)
    with pytest.raises(UpdateError, match="slot b is running on trial and not committed yet .slot a is the"):
        install(dev, make(tmp_path, key, version="3.0", name="c.bundle"), key)
    assert names(dev) == before                                      # slot a's good entry is still there


def test_an_old_image_without_a_fallback_refuses_on_trial_too(tmp_path, device):
    key = Identity.generate()
    install(device, make(tmp_path, key), key)
    device["cmdline"] = "hearth.slot=b"
    with pytest.raises(UpdateError, match="slot b is running on trial"):
        install(device, make(tmp_path, key, version="3.0", name="c.bundle"), key)


def test_a_healthy_boot_makes_the_fallback_name_its_slot(tmp_path, dev):
    key = Identity.generate()
    install(dev, make(tmp_path, key), key)
    said = []
    assert commit(dev["boot"], "ro hearth.slot=b", log=said.append) == "b"
    assert fallback_slot(dev["boot"]) == "b" and any("slot b committed" in line for line in said), said
    text = open(os.path.join(dev["edir"], FALLBACK)).read()
    assert text.startswith("title Hearth (slot b, committed: fallback)\n")
    assert "linux /b/vmlinuz" in text and "root=PARTLABEL=root-b" in text
    assert commit(dev["boot"], "ro hearth.slot=b", log=said.append) is None      # already so: nothing written
    # the next install (slot b committed) goes to slot a and keeps the fallback on b
    os.rename(os.path.join(dev["edir"], "hearth-2-b+3.conf"), os.path.join(dev["edir"], "hearth-2-b.conf"))
    dev["cmdline"] = "hearth.slot=b"
    install(dev, make(tmp_path, key, version="3.0", name="c.bundle"), key)
    assert names(dev) == [FALLBACK, "hearth-2-b.conf", "hearth-3-a+3.conf"] and fallback_slot(dev["boot"]) == "b"


def test_a_damaged_running_entry_installs_from_the_fallback(tmp_path, dev):
    with open(os.path.join(dev["edir"], "hearth-1-a.conf"), "wb") as f:
        f.write(os.urandom(300).replace(b"hearth.slot", b"xxxxxxxxxxx"))
    key = Identity.generate()
    assert install(dev, make(tmp_path, key), key)["entry"] == "hearth-2-b+3.conf"
    text = open(os.path.join(dev["edir"], "hearth-2-b+3.conf")).read()
    assert text.startswith("title Hearth (slot b)\n") and "hearth.slot=b" in text and "/b/initrd.img" in text
    # nor does a healthy boot copy a damaged entry into the fallback
    said = []
    os.unlink(os.path.join(dev["edir"], FALLBACK))
    assert commit(dev["boot"], "hearth.slot=a", log=said.append) is None
    assert "not an entry Hearth wrote" in said[0] and not os.path.exists(os.path.join(dev["edir"], FALLBACK))


def test_the_booted_entry_is_read_from_systemd_boots_variable(tmp_path):
    var = tmp_path / "LoaderEntrySelected"
    var.write_bytes(b"\x06\0\0\0" + FALLBACK.encode("utf-16-le") + b"\0\0")
    assert booted_entry(str(var)) == FALLBACK
    assert booted_entry(str(tmp_path / "missing")) is None
