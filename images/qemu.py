"""Boot an image in QEMU for tests: UEFI firmware, a virtio disk, user networking with forwarded ports, and the
serial console captured to a file the test reads.

KVM is detected by trying it: this host has /dev/kvm but it runs no stock guest kernel, so a KVM boot that
shows nothing on the console within a few seconds is abandoned for software emulation (TCG).
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

FIRMWARE = {
    "x86_64": ("qemu-system-x86_64", ["-machine", "q35", "-cpu", "max"],
               "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    "aarch64": ("qemu-system-aarch64", ["-machine", "virt", "-cpu", "max"],
                "/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VM:
    """machine: "x86_64" or "aarch64" (UEFI firmware boots the image's own bootloader), or "raspi3b": QEMU's
    Raspberry Pi 3 B, which has no GPU firmware, so the kernel, initramfs, device tree and command line that
    the Pi firmware would load are passed in `direct` ({"kernel", "initrd", "dtb", "append"}) and the image is
    the SD card (its size rounded up to a power of two, as QEMU's SD card model requires)."""

    def __init__(self, image: str, machine: str = "x86_64", *, forwards: dict[int, int] | None = None,
                 memory: int = 1024, snapshot: bool = False, drives: list[str] | None = None,
                 direct: dict[str, str] | None = None):
        self.direct = direct
        self.image = image
        self.machine = machine
        self.forwards = forwards or {}            # guest port -> host port
        self.memory = memory
        self.snapshot = snapshot
        self.dir = tempfile.mkdtemp(prefix="hearth-vm-")
        self.serial = os.path.join(self.dir, "serial.log")
        self.proc = None
        self.accel = None
        self.drives = drives or []                # extra raw disks: /dev/vdb, /dev/vdc, …
        self.console = os.path.join(self.dir, "console.sock")
        self._sock = None

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
        if self.machine == "raspi3b":
            args = ["qemu-system-aarch64", *self._raspi_args(), "-accel", "tcg", "-nographic", "-monitor", "none",
                    "-chardev", f"socket,id=s0,path={self.console},server=on,wait=off,logfile={self.serial},"
                    "logappend=on", "-serial", "chardev:s0"]
            if not os.path.exists(self.serial):
                open(self.serial, "w").close()
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            self.accel = "tcg"
            return
        binary, machine, code, vars_template = FIRMWARE[self.machine]
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is not installed (Debian: qemu-system-x86 / qemu-system-arm)")
        vars_copy = os.path.join(self.dir, "vars.fd")
        shutil.copy(vars_template, vars_copy)
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.forwards.items())
        if os.path.exists(self.console):
            os.unlink(self.console)
        args = [binary, *machine, "-accel", accel, "-m", str(self.memory), "-smp", "2", "-nographic",
                "-monitor", "none",
                "-chardev", f"socket,id=s0,path={self.console},server=on,wait=off,logfile={self.serial},logappend=on",
                "-serial", "chardev:s0",
                "-drive", f"if=pflash,format=raw,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,file={vars_copy}",
                "-drive", f"file={self.image},if=virtio,format=raw" + (",snapshot=on" if self.snapshot else ""),
                "-netdev", "user,id=n0" + ("," + fwd if fwd else ""), "-device", "virtio-net-pci,netdev=n0"]
        for extra in self.drives:
            args += ["-drive", f"file={extra},if=virtio,format=raw,readonly=on"]
        if not os.path.exists(self.serial):
            open(self.serial, "w").close()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.accel = accel

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

    def wait_for(self, text: str, timeout: float, after: int = 0) -> float:
        """Seconds until text appears on the console (past offset `after`); AssertionError with the console's
        tail otherwise."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if text in self.output()[after:]:
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise AssertionError(f"the VM exited ({self.proc.returncode}): "
                                     f"{self.proc.stderr.read().decode()[-1000:]}\n{self.output()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"{text!r} did not appear on the console within {timeout} s "
                             f"({self.accel}); last output:\n{self.output()[-4000:]}")

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
