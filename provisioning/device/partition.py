"""The data partition grown to the end of the disk at first boot: an image is small; the card or disk it is
written to is not."""

import os
import subprocess

from edge.provisioning.seed import SeedError

DATA_LABEL = "hearth-data"
GROW_MIN = 16 << 20


def _sys(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def grow_data_partition(label: str = DATA_LABEL, log=print) -> int | None:
    """Grow the data partition (the disk's last) to the end of the disk and its file system with it, online.
    An image is small; the card or disk it is written to is not. Returns the new size in bytes, or None if
    there was nothing to do (no such partition here, not the last one, or no room after it)."""
    link = f"/dev/disk/by-label/{label}"
    if not os.path.exists(link):
        return None
    dev = os.path.basename(os.path.realpath(link))
    sysdir = f"/sys/class/block/{dev}"
    if not os.path.exists(f"{sysdir}/partition"):
        return None
    disk = os.path.basename(os.path.realpath(f"{sysdir}/.."))
    number = int(_sys(f"{sysdir}/partition"))
    start, size = int(_sys(f"{sysdir}/start")) * 512, int(_sys(f"{sysdir}/size")) * 512
    disk_size = int(_sys(f"/sys/class/block/{disk}/size")) * 512
    ends = [int(_sys(f"/sys/class/block/{p}/start")) * 512 + int(_sys(f"/sys/class/block/{p}/size")) * 512
            for p in os.listdir(f"/sys/class/block/{disk}") if os.path.exists(f"/sys/class/block/{p}/partition")]
    if start + size < max(ends) or disk_size - (start + size) < GROW_MIN + (1 << 20):
        return None

    def run(*args, **kw):
        r = subprocess.run(args, capture_output=True, text=True, **kw)
        if r.returncode:
            raise SeedError(f"growing the data partition: {' '.join(args)} failed: {r.stderr.strip()}")
        return r
    # on GPT, writing the table also moves the backup header to the (new) end of the disk
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-N", str(number), f"/dev/{disk}", input=", +\n")
    run("partx", "-u", "-n", str(number), f"/dev/{disk}")
    run("resize2fs", f"/dev/{dev}")
    new = int(_sys(f"{sysdir}/size")) * 512
    log(f"hearth: data partition grown from {size >> 20} MiB to {new >> 20} MiB")
    return new
