"""The QEMU harness's reboot handling: a reset of the guest is a power cycle (QEMU started again on the same
disk and firmware variables), whether QEMU exits at the reset (-no-reboot) or hangs after the guest's
`reboot: machine restart` and is killed.

The rules themselves are checked on console texts; then real QEMU and OVMF firmware run both paths. The guest
is OVMF's own UEFI shell: the disk is a FAT file system with a startup.nsh that, on the first power-on, prints
the kernel's reset line and hangs (as the emulated machine did on some hosts); on the second, finding the file
the first wrote, prints it and resets the machine; on the third says so. So the test sees the scenario go on
from where it was after each power cycle (a key pressed at the shell's 5 s countdown each time, so the script
runs at once). No image build.
"""

import os
import shutil
import subprocess

import pytest

from edge.images.qemu import FIRMWARE, RESET_LINE, VM, after_exit, reset_stuck

QEMU_WHY_NOT = ("no qemu-system-x86_64" if shutil.which("qemu-system-x86_64") is None else
                "no OVMF firmware" if not os.path.exists(FIRMWARE["x86_64"][2]) else
                "no mkfs.vfat or mcopy" if not (shutil.which("mkfs.vfat") and shutil.which("mcopy")) else None)
# first power-on: note it on the disk, print the reset line, then `reset` or hang; second: say so.
# (`echo "a" "b"` prints `a b`, so the script's text never contains what the test waits for)
SCRIPT = """@echo -off
fs0:
if exist on2.txt then
  echo "THIRD" "POWER-ON"
  stall 600000000
endif
if exist on1.txt then
  echo "two" > on2.txt
  echo "{line}"
  reset
endif
echo "one" > on1.txt
echo "{line}"
stall 600000000
"""
@pytest.mark.parametrize("returncode, console, what", [
    (0, "Linux version 6.1\n…\nreboot: machine restart\n", "power-cycle"),
    (0, "BdsDxe: loading Boot0001\n", "power-cycle"),           # a reset by the firmware itself
    (0, "systemd-shutdown[1]: Powering off.\nreboot: Power down\n", "powered-off"),
    (1, "reboot: machine restart\n", "crashed"),
    (-9, "", "crashed"),
])
def test_what_an_exit_of_qemu_means(returncode, console, what):
    assert after_exit(returncode, console) == what


def test_a_reset_is_stuck_only_after_the_grace_since_the_reset_line():
    console = "systemd-shutdown[1]: Rebooting.\nreboot: machine restart\n"
    assert not reset_stuck(console, None, 20)          # not seen yet
    assert not reset_stuck(console, 19.9, 20)
    assert reset_stuck(console, 20, 20)
    assert reset_stuck(console, 0, 0)                  # grace 0: killed as soon as the line shows
    assert reset_stuck("[  113.29] reboot: Restarting system\n", 20, 20)     # Linux 6.1's line before the reset
    assert not reset_stuck("systemd-shutdown[1]: Rebooting.\n", 999, 20)      # the kernel has not reset yet


def shell_disk(path) -> str:
    subprocess.run(["truncate", "-s", "34M", str(path)], check=True)
    subprocess.run(["mkfs.vfat", "-n", "HARNESS", str(path)], check=True, capture_output=True)
    script = path.parent / "startup.nsh"
    script.write_text(SCRIPT.format(line=RESET_LINE).replace("\n", "\r\n"))
    subprocess.run(["mcopy", "-i", str(path), str(script), "::startup.nsh"], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return str(path)


COUNTDOWN = "any other key to continue"   # the shell's 5 s wait before startup.nsh, ended by a key


def run_startup(vm, after: int, stage: str):
    """Press a key at the shell's countdown of this power-on (past offset after): startup.nsh runs at once
    instead of 5 s later."""
    vm.wait_for(COUNTDOWN, 120, after=after, stage=f"{stage}: the shell's countdown")
    vm.send("")


@pytest.mark.skipif(QEMU_WHY_NOT is not None, reason=QEMU_WHY_NOT or "")
def test_a_reset_powers_the_machine_on_again_and_the_scenario_goes_on(tmp_path, console_log):
    vm = VM(shell_disk(tmp_path / "fat.img"), memory=256, network=False, console_log=console_log, reset_grace=3)
    try:
        vm.start()
        # first power-on: the reset line, and the machine hangs there: killed after 3 s, started again
        run_startup(vm, 0, "first power-on")
        vm.wait_for(RESET_LINE, 120, stage="first power-on: the reset line")
        vm.wait_for("[harness] power cycle 1", 60, stage="first power-on: killed after the reset line")
        # second: the reset line and a real reset, at which QEMU exits (-no-reboot): started again
        second = vm.output().index("[harness] power cycle 1")
        run_startup(vm, second, "second power-on")
        vm.wait_for(RESET_LINE, 120, after=second, stage="second power-on: the reset line")
        vm.wait_for("[harness] power cycle 2", 60, stage="second power-on: QEMU exited at the reset")
        run_startup(vm, vm.output().index("[harness] power cycle 2"), "third power-on")
        vm.wait_for("THIRD POWER-ON", 120, stage="third power-on")
        text = vm.output()
        assert vm.power_cycles == 2, text
        first, second = text.split("[harness] power cycle 1: ")[1], text.split("[harness] power cycle 2: ")[1]
        assert first.startswith("killed: QEMU still ran 3 s after the guest's reset line"), text
        assert second.startswith("QEMU exited at a reset (-no-reboot)"), text
        # each power-on went on from what the one before wrote on the disk: the reset line twice, no more
        assert sum(line.strip() == RESET_LINE for line in text.splitlines()) == 2, text
    finally:
        vm.close()
