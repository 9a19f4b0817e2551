"""Finding 13: `update apply` took an older signed version and another board's bundle, and a genuine signed
manifest with a swapped payload of the same size wrote the attacker's bytes into slot B and deleted its loader
entry before the hash check refused it.

On 53df6de apply() checked only the signature before deleting slot B's entries and streaming root.img.zst into
the partition; the root's hash was compared after the write, the board and version never. Here the same
attacks run against apply() on files standing in for the boot partition and the slots (the install logic is
the same on a device; the QEMU image tests run it there): each is refused, and slot B, every file on the boot
partition and the version record are byte for byte what they were.
"""

import os
import shutil
import tarfile

import pytest

from edge.identity import Identity
from edge.provisioning.device.update import apply
from edge.provisioning.slots import UpdateError
from tests.test_update import ENTRY_A, ROOT, make, write_tar

pytestmark = [pytest.mark.attack,
              pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")]

ENTRY_B = ENTRY_A.replace("slot a", "slot b").replace("root-a", "root-b").replace("slot=a", "slot=b") \
    .replace("/a/", "/b/")


@pytest.fixture
def device(tmp_path):
    """Slot a running and committed (generation 2), slot b holding the previous good version (generation 1)."""
    boot = tmp_path / "efi"
    edir = boot / "loader" / "entries"
    edir.mkdir(parents=True)
    (edir / "hearth-2-a.conf").write_text(ENTRY_A)
    (edir / "hearth-1-b.conf").write_text(ENTRY_B)
    (edir / "hearth-0-committed.conf").write_text(ENTRY_A.replace("(slot a)", "(slot a, committed: fallback)"))
    for s in "ab":
        (boot / s).mkdir()
        (boot / s / "vmlinuz").write_bytes(b"old kernel " + s.encode())
        (boot / s / "initrd.img").write_bytes(b"old initrd " + s.encode())
    (boot / "hearth-versions.json").write_text('{"floor": "3.0", "committed": "a", "slots": {"a": "3.0"}}\n')
    slots = {s: tmp_path / f"root-{s}" for s in "ab"}
    for s, p in slots.items():
        p.write_bytes(s.encode() * 500_000)
    image = tmp_path / "image.json"
    image.write_text('{"board": "x86-64", "version": "1.0", "debug_console": false}')
    return {"boot": boot, "slots": slots, "image": str(image), "key": Identity.generate()}


def snapshot(device) -> dict:
    """Every byte of the boot partition's files and of both slots."""
    out = {str(p.relative_to(device["boot"])): p.read_bytes() for p in sorted(device["boot"].rglob("*"))
           if p.is_file()}
    out.update({f"slot {s}": p.read_bytes() for s, p in device["slots"].items()})
    return out


def attack(device, bundle):
    return apply(bundle, boot=str(device["boot"]), trusted=[device["key"].node_id],
                 device_for=lambda s: str(device["slots"][s]), cmdline="ro hearth.slot=a", log=lambda m: None,
                 image_info=device["image"])


def swapped(tmp_path, key, member: str) -> str:
    """A genuine signed bundle with one payload file replaced by the attacker's bytes of the same size."""
    genuine = make(tmp_path, key, version="4.0", name="genuine.bundle")
    with tarfile.open(genuine) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    out = []
    for name, data in members:
        if name == member:
            data = (b"ATTACKER" * len(data))[:len(data)]
        out.append((name, data))
    return write_tar(tmp_path / f"swapped-{member}.bundle", out)


@pytest.mark.parametrize("member", ["root.img.zst", "vmlinuz", "initrd.img"])
def test_f13_swapped_payload_refused_before_slot_b_or_any_entry_is_touched(tmp_path, device, member):
    before = snapshot(device)
    with pytest.raises(UpdateError, match=f"{member} in the bundle does not match its signed hash"):
        attack(device, swapped(tmp_path, device["key"], member))
    after = snapshot(device)
    assert after.keys() == before.keys()
    assert [k for k in before if before[k] != after[k]] == []
    # the genuine bundle still installs (the refusal was the payload's, not the setup's)
    assert attack(device, make(tmp_path, device["key"], version="4.0", name="ok.bundle"))["slot"] == "b"
    assert device["slots"]["b"].read_bytes()[:len(ROOT)] == ROOT


def test_f13_older_signed_version_refused_then_allowed_by_a_signed_downgrade(tmp_path, device):
    before = snapshot(device)
    with pytest.raises(UpdateError) as refused:
        attack(device, make(tmp_path, device["key"], version="2.0", name="old.bundle"))
    print(refused.value)
    assert "version floor 3.0" in str(refused.value) and "--downgrade-from 3.0" in str(refused.value)
    # a downgrade signed for older devices does not carry over to this one
    with pytest.raises(UpdateError, match="allows a downgrade only from 2.5 or older"):
        attack(device, make(tmp_path, device["key"], version="2.0", name="replay.bundle",
                            extra={"downgrade_from": "2.5"}))
    # the downgrade field is covered by the signature: added afterwards, the bundle is not trusted
    with tarfile.open(make(tmp_path, device["key"], version="2.0", name="plain.bundle")) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    members[0] = ("manifest.json", members[0][1].replace(b'"version": "2.0"',
                                                          b'"version": "2.0", "downgrade_from": "9"'))
    with pytest.raises(UpdateError, match="not signed by a key this device trusts"):
        attack(device, write_tar(tmp_path / "forged.bundle", members))
    assert snapshot(device) == before
    result = attack(device, make(tmp_path, device["key"], version="2.0", name="down.bundle",
                                 extra={"downgrade_from": "3.0"}))
    assert result["slot"] == "b"


def test_f13_another_boards_bundle_refused(tmp_path, device):
    before = snapshot(device)
    with pytest.raises(UpdateError, match="for board rpi4; this device is x86-64"):
        attack(device, make(tmp_path, device["key"], version="4.0", board="rpi4"))
    assert snapshot(device) == before
    assert os.path.exists(device["boot"] / "loader" / "entries" / "hearth-1-b.conf")
