"""`hearth image build BOARD --dry-run`: the builder's plan for each board, printed; nothing built, no key read.
The three boards Debian can build get the whole plan and exit 0; rpi5 and jetson-orin get the plan up to what
is missing, that text, and a non-zero exit."""

import os

import pytest

from tests.provisioning.test_slots import CMDLINE_A, CONFIG_A, ENTRY_A

from .conftest import hearth

STEPS = ["1. wheels", "2. root file system", "3. file systems", "4. disk image", "5. compress", "6. manifest"]


@pytest.mark.parametrize("board, table, boot_text", [
    ("x86-64", "GPT", ENTRY_A),
    ("qemu-arm64", "GPT", ENTRY_A.replace("ttyS0", "ttyAMA0")),
    ("rpi4", "MBR", CONFIG_A),
])
def test_a_buildable_boards_plan(tmp_path, board, table, boot_text):
    out = tmp_path / "out"
    r = hearth("image", "build", board, "--dry-run", "-o", str(out), "--version", "1.2.3",
               env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    text = r.stdout
    assert text.startswith(f"Plan for hearth-{board}-1.2.3:") and "nothing is built" in text
    for step in STEPS:
        assert f"\n{step}" in text
    assert f"hearth-{board}-1.2.3.img: " in text and f"MiB, {table}" in text
    for part in ("boot", "root-a", "root-b", "data"):
        assert f"\n   {part} " in text
    # mmdebstrap in a mount namespace of its own: a build that is killed leaves no mount on the host
    assert "$ unshare --mount --propagation private mmdebstrap " in text
    assert "-m edge.images.rootfs customize" in text and "--require-hashes" in text
    assert boot_text in text                           # the boot files' texts, as the image gets them
    assert "label: " + ("gpt" if table == "GPT" else "dos") in text
    assert not out.exists()                            # nothing built, nothing written


def test_the_pi_plan_names_the_root_by_the_disk_id_the_table_gets(tmp_path):
    r = hearth("image", "build", "rpi4", "--dry-run", "-o", str(tmp_path), env={**os.environ, "SOURCE_DATE_EPOCH": "1"})
    assert r.returncode == 0, r.stderr
    disk_id = next(line.split("0x")[1][:8] for line in r.stdout.splitlines() if "label-id: 0x" in line)
    assert CMDLINE_A.replace("5c0f2c4e", disk_id) in r.stdout


@pytest.mark.parametrize("board, needs", [("rpi5", "linux-image-rpi-2712"), ("jetson-orin", "Jetson Linux")])
def test_a_board_debian_cannot_build_gets_its_plan_up_to_what_is_missing(tmp_path, board, needs):
    r = hearth("image", "build", board, "--dry-run", "-o", str(tmp_path / "out"))
    assert r.returncode != 0
    assert r.stdout.startswith(f"Plan for hearth-{board}-") and "bootloader " in r.stdout
    assert "1. wheels" not in r.stdout
    assert f"{board} cannot be built" in r.stderr and needs in r.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_board_and_a_build_without_a_key_are_refused_in_one_line(tmp_path):
    r = hearth("image", "build", "amiga", "--dry-run", "-o", str(tmp_path))
    assert r.returncode != 0 and "no recipe for board 'amiga'" in r.stderr and "x86-64" in r.stderr
    r = hearth("image", "build", "x86-64", "-o", str(tmp_path))
    assert r.returncode != 0 and "--key is needed" in r.stderr
