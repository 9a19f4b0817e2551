"""Boot an image in QEMU for tests: UEFI firmware, a virtio disk, user networking with forwarded ports, and the
serial console captured to a file the test reads.

KVM is detected by trying it: this host has /dev/kvm but it runs no stock guest kernel, so a KVM boot that
shows nothing on the console within a few seconds is abandoned for software emulation (TCG).

A guest's reboot is a power cycle: QEMU runs with -no-reboot, so a reset (the guest's, or the firmware's own)
ends the process, and the harness starts QEMU again on the same disk and the same firmware variables. An
emulated warm reset is not exercised at all: on some hosts (q35, TCG, OVMF) it hung now and then after the
kernel's `reboot: machine restart`, which a test could not tell from a slot that does not boot. Where QEMU does
not exit within `reset_grace` seconds of that line (or of `reboot: Restarting system`), the harness kills it
and powers the machine on again; the console log says so (`[harness] power cycle N: …`). Under TCG the x86 CPU
is a fixed model (Nehalem), not `max`, whose feature set follows the QEMU build and the host.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

FIRMWARE = {
    "x86_64": ("qemu-system-x86_64", ["-machine", "q35"],
               "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    "aarch64": ("qemu-system-aarch64", ["-machine", "virt"],
                "/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
}
# the CPU per machine and accelerator: KVM passes the host's through; TCG gets a fixed model where one fits
# (x86: Nehalem, x86-64-v2, which Debian's kernel and the agent's kernels run on); aarch64 has no fixed model
# with the features Debian's arm64 kernel expects under TCG, so it keeps `max`
# +rdrand: Nehalem has no hardware RNG, so the guest's kernel waited 12-16 s at each boot for entropy and, once
# in a full A/B run here, never got it (udev stuck in getrandom, soft lockups, the stage timed out); TCG emulates
# RDRAND, which seeds the kernel's RNG at once, as every board Hearth targets has a hardware RNG
CPU = {("x86_64", "kvm"): "host", ("x86_64", "tcg"): "Nehalem,+rdrand", ("aarch64", "kvm"): "host",
       ("aarch64", "tcg"): "max"}
# no display adapter (nothing in a test looks at a screen): under TCG the guest drawing every console line
# (console=tty0) on an emulated VGA framebuffer cost ~8 s of a ~75 s boot here (q35 adds a VGA unless told not to)
HEADLESS = {"x86_64": ["-vga", "none"]}
RESET_LINE = "reboot: machine restart"       # the kernel's last line before it resets the machine (x86)
# what Linux prints as it restarts (kernel_restart(): "Restarting system", then the architecture's line)
RESET_LINES = (RESET_LINE, "reboot: Restarting system")
POWER_OFF_LINE = "reboot: Power down"


def after_exit(returncode: int, console: str) -> str:
    """What a QEMU that ended by itself (not killed by the harness) means, from its exit status and what the
    guest printed since this power-on: "power-cycle" (with -no-reboot a reset, the guest's or the firmware's,
    ends QEMU with status 0), "powered-off" (the guest shut down), or "crashed" (QEMU failed)."""
    if returncode != 0:
        return "crashed"
    if POWER_OFF_LINE in console:
        return "powered-off"
    return "power-cycle"


def reset_stuck(console: str, seconds_since_seen: float | None, grace: float) -> bool:
    """True when the guest printed the reset line since this power-on and QEMU is still running `grace`
    seconds after the harness first saw it: the reset hangs, and the harness power-cycles the machine."""
    return any(line in console for line in RESET_LINES) and seconds_since_seen is not None \
        and seconds_since_seen >= grace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VM:
    """machine: "x86_64" or "aarch64" (UEFI firmware boots the image's own bootloader), or "raspi3b": QEMU's
    Raspberry Pi 3 B, which has no GPU firmware, so the kernel, initramfs, device tree and command line that
    the Pi firmware would load are passed in `direct` ({"kernel", "initrd", "dtb", "append"}) and the image is
    the SD card (its size rounded up to a power of two, as QEMU's SD card model requires).

    console_log: where the serial console is kept (it outlives close(): a test's artefact); by default a file in
    the VM's temporary directory. reset_grace: seconds QEMU may go on running after the guest's reset line
    before the harness kills it and powers the machine on again (0: at once, every time). A UEFI machine whose
    disk is written in place is power-cycled on every reset; a snapshot disk would lose its writes in a power
    cycle, so such a VM (and the raspi3b) keeps QEMU's own warm reset."""

    def __init__(self, image: str, machine: str = "x86_64", *, forwards: dict[int, int] | None = None,
                 memory: int = 1024, snapshot: bool = False, drives: list[str] | None = None,
                 direct: dict[str, str] | None = None, console_log: str | None = None, reset_grace: float = 20.0,
                 network: bool = True):
        self.direct = direct
        self.network = network
        self.image = image
        self.machine = machine
        self.forwards = forwards or {}            # guest port -> host port
        self.memory = memory
        self.snapshot = snapshot
        self.dir = tempfile.mkdtemp(prefix="hearth-vm-")
        self.serial = console_log or os.path.join(self.dir, "serial.log")
        self.proc = None
        self.accel = None
        self.drives = drives or []                # extra raw disks: /dev/vdb, /dev/vdc, …
        self.console = os.path.join(self.dir, "console.sock")
        self.monitor_path = os.path.join(self.dir, "monitor.sock")
        self._sock = None
        self.power_cycling = machine in FIRMWARE and not snapshot
        self.reset_grace = reset_grace
        self.power_cycles = 0                     # how often the harness powered the machine on again
        self.stage = "boot"                       # what the test waits for now (named in failures)
        self._on_at = 0                           # console offset where the current power-on began
        self._reset_seen = None                   # monotonic time the harness first saw this power-on's reset line

    def _raspi_args(self) -> list[str]:
        d = self.direct
        size = os.path.getsize(self.image)
        if size & (size - 1):
            raise RuntimeError(f"QEMU's SD card must be a power of two in size; {self.image} is {size} bytes "
                               "(truncate a copy to the next power of two)")
        return ["-machine", "raspi3b", "-kernel", d["kernel"], "-initrd", d["initrd"], "-dtb", d["dtb"],
                "-append", d["append"], "-drive", f"file={self.image},if=sd,format=raw"
                + (",snapshot=on" if self.snapshot else "")]

    def _start(self, accel: str):
        os.makedirs(os.path.dirname(os.path.abspath(self.serial)), exist_ok=True)
        if not os.path.exists(self.serial):
            open(self.serial, "w").close()
        self._on_at = len(self.output())
        self._reset_seen = None
        for path in (self.console, self.monitor_path):
            if os.path.exists(path):
                os.unlink(path)
        chardev = ["-monitor", f"unix:{self.monitor_path},server=on,wait=off",
                   "-chardev", f"socket,id=s0,path={self.console},server=on,wait=off,logfile={self.serial},"
                   "logappend=on", "-serial", "chardev:s0"]
        if self.machine == "raspi3b":
            args = ["qemu-system-aarch64", *self._raspi_args(), "-accel", "tcg", "-nographic", *chardev]
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            self.accel = "tcg"
            return
        binary, machine, code, vars_template = FIRMWARE[self.machine]
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is not installed (Debian: qemu-system-x86 / qemu-system-arm)")
        # the firmware's variables live as long as the VM: a power cycle keeps them, as a real board's flash does
        vars_copy = os.path.join(self.dir, "vars.fd")
        if not os.path.exists(vars_copy):
            shutil.copy(vars_template, vars_copy)
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.forwards.items())
        args = [binary, *machine, "-cpu", CPU[self.machine, accel], "-accel", accel, "-m", str(self.memory),
                "-smp", str(self._vcpus(accel)), "-nographic", *HEADLESS.get(self.machine, []), *chardev,
                "-drive", f"if=pflash,format=raw,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,file={vars_copy}",
                "-drive", f"file={self.image},if=virtio,format=raw" + (",snapshot=on" if self.snapshot else ""),
                *(["-netdev", "user,id=n0" + ("," + fwd if fwd else ""), "-device", "virtio-net-pci,netdev=n0"]
                  if self.network else ["-nic", "none"])]
        if self.power_cycling:
            args.append("-no-reboot")
        for extra in self.drives:
            args += ["-drive", f"file={extra},if=virtio,format=raw,readonly=on"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.accel = accel

    @staticmethod
    def _vcpus(accel: str) -> int:
        """Two vCPUs under KVM; one under TCG. TCG runs each vCPU as a host thread, and on a host with few
        cores one vCPU can wait for seconds on another the host is not running (an IPI in
        smp_call_function_many_cond): the guest's soft-lockup detector fires and the boot stalls for minutes.
        One vCPU has no other to wait on."""
        return 2 if accel == "kvm" else 1

    def start(self, kvm_grace: float = 8.0):
        if self.accel == "tcg" or self.machine != os.uname().machine:   # a restart, or no KVM for this CPU
            self._start("tcg")
            return self
        if os.path.exists("/dev/kvm"):
            base = os.path.getsize(self.serial) if os.path.exists(self.serial) else 0
            self._start("kvm")
            deadline = time.monotonic() + kvm_grace
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if os.path.getsize(self.serial) > base:
                    return self
                time.sleep(0.2)
            self.kill()
        self._start("tcg")
        return self

    def _note(self, text: str):
        """A line of the harness's own in the console log; written only while QEMU is not running, so it never
        lands inside a line of the guest's."""
        with open(self.serial, "a") as f:
            f.write(f"\n[harness] {text}\n")

    def power_cycle(self, why: str):
        """Power the machine off (if QEMU still runs) and on again: same disk, same firmware variables."""
        self.kill()
        self.power_cycles += 1
        self._note(f"power cycle {self.power_cycles}: {why}; QEMU started again (stage: {self.stage})")
        self.start()

    def check(self):
        """Follow the machine: a reset (QEMU exited by itself with -no-reboot, or still running `reset_grace`
        seconds after the guest's reset line) powers it on again; a crash or a power-off is an AssertionError
        naming the stage. Called by wait_for while it polls."""
        rc = self.proc.poll()
        console = self.output()[self._on_at:]
        if rc is None:
            if not self.power_cycling or not any(line in console for line in RESET_LINES):
                return
            if self._reset_seen is None:
                self._reset_seen = time.monotonic()
            if reset_stuck(console, time.monotonic() - self._reset_seen, self.reset_grace):
                self.power_cycle(f"killed: QEMU still ran {time.monotonic() - self._reset_seen:.0f} s after "
                                 "the guest's reset line")
            return
        what = after_exit(rc, console) if self.power_cycling else ("crashed" if rc else "powered-off")
        if what == "power-cycle":
            self.power_cycle("QEMU exited at a reset (-no-reboot)")
            return
        err = self.proc.stderr.read().decode(errors="replace")[-1000:]
        raise AssertionError(f"stage {self.stage!r}: the VM {what} (QEMU exit status {rc}) {err}\n"
                             f"console log: {self.serial}\n{self.output()[-3000:]}")

    def monitor(self, command: str) -> str:
        """A command for QEMU's human monitor (e.g. "system_reset"); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.monitor_path)
            s.sendall(command.encode() + b"\n")
            out = b""
            try:
                while b"(qemu)" not in out.split(command.encode(), 1)[-1]:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    out += chunk
            except OSError:
                pass                               # QEMU may exit on the command (a reset with -no-reboot)
            return out.decode(errors="replace")

    def send(self, line: str):
        """Type a line on the serial console (a test image has a root shell there)."""
        if self._sock is None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self._sock.connect(self.console)
                    # keep reading what the guest prints (the log file has it): an unread socket fills up,
                    # QEMU stops sending, and the guest blocks writing to its console
                    threading.Thread(target=self._drain, args=(self._sock,), daemon=True).start()
                    break
                except OSError:
                    self._sock.close()
                    self._sock = None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        self._sock.sendall(line.encode() + b"\r")

    @staticmethod
    def _drain(sock):
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def output(self) -> str:
        with open(self.serial, errors="replace") as f:
            return f.read()

    def wait_for(self, text: str, timeout: float, after: int = 0, stage: str | None = None) -> float:
        """Seconds until text appears on the console (past offset `after`), power-cycling the machine at each
        reset meanwhile; AssertionError naming the stage, the console log's path and its tail otherwise."""
        if stage is not None:
            self.stage = stage
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if text in self.output()[after:]:
                return time.monotonic() - t0
            self.check()
            time.sleep(0.5)
        raise AssertionError(f"stage {self.stage!r}: {text!r} did not appear on the console within {timeout} s "
                             f"({self.accel}, {self.power_cycles} power cycles); console log: {self.serial}; "
                             f"last output:\n{self.output()[-4000:]}")

    def wait_at(self, text: str, timeout: float, after: int = 0, stage: str | None = None) -> int:
        """wait_for, returning the console offset just past where text appeared: the next wait starts there, so
        a line printed once is never counted for two steps."""
        self.wait_for(text, timeout, after, stage)
        return self.output().index(text, after) + len(text)

    def kill(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
