"""The root file system: mmdebstrap from Debian's packages, with an initramfs of only the recipe's drivers, the
agent in /opt/hearth/venv, its systemd units, the first-boot service, a read-only root with /var/lib/hearth on
the data partition and logs in RAM (the customize step, run inside mmdebstrap's hook)."""

import json
import os
import shlex
import shutil
import sys

import edge.provisioning
from edge.images import host
from edge.images.recipe import Recipe, load
from edge.images.wheels import LOCK

UNITS = os.path.dirname(os.path.abspath(edge.provisioning.__file__))     # the systemd units ship with it
BASE_PACKAGES = ["systemd", "systemd-sysv", "udev", "kmod", "initramfs-tools", "zstd", "python3", "python3-venv",
                 "e2fsprogs", "dosfstools", "fdisk"]
EFI_PACKAGES = {"systemd-boot": ["systemd-boot-efi", "systemd-boot"]}   # the EFI binary; bless-boot, bootctl


def _write(root: str, path: str, text: str, mode: int = 0o644):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    os.chmod(full, mode)


FSTAB = """# Hearth appliance: the root (the slot the bootloader chose, mounted read-only from the kernel command line,
# so no line here) stays read-only; the node's data has its own partition; logs live in RAM.
LABEL=hearth-data /var/lib/hearth   ext4   rw,noatime,nodev,nosuid,x-systemd.growfs 0 2
LABEL=HEARTHBOOT  /efi              vfat   rw,noatime,umask=0077,nofail        0 2
tmpfs             /tmp              tmpfs  rw,nosuid,nodev,size=64M            0 0
tmpfs             /var/tmp          tmpfs  rw,nosuid,nodev,size=16M            0 0
tmpfs             /var/log          tmpfs  rw,nosuid,nodev,size=32M            0 0
tmpfs             /var/lib/systemd  tmpfs  rw,nosuid,nodev,size=8M             0 0
"""
NETWORK = """[Match]
Name=en* eth* wl*

[Network]
DHCP=yes
MulticastDNS=no
"""
JOURNALD = """[Journal]
Storage=volatile
RuntimeMaxUse=32M
ForwardToConsole={console}
MaxLevelConsole=info
"""


# run inside the target (under qemu-user for another architecture): the native modules load and agree with
# hashlib, so a cross-compiled module that imports but computes wrong never ships
NATIVE_CHECK = """
import hashlib, os, sys, edge.kernels._erasure, edge.kernels._chunking
from edge.kernels import _blockio, _hashing
blocks = [bytes(range(256)) * 1024, b"hearth" * 999, b""]
assert _hashing.sha256_many(blocks) == [hashlib.sha256(b).digest() for b in blocks], "native sha256 is wrong"
assert _blockio.b32lower(b"hearth") == "nbswc4tuna", "native base32 is wrong"
assert len(_blockio.read_file(sys.executable)[0]) == os.path.getsize(sys.executable), "native file read is wrong"
print("native kernels: ok")
"""


VENV = "/opt/hearth/venv"
LAUNCHER = """#!/opt/hearth/venv/bin/python3
import sys
from edge.cli import main
sys.exit(main())
"""


def install_agent(recipe: Recipe, root: str, wheels: str, log):
    """The agent and its dependencies into a venv in the target. The target's Python makes the venv (without
    pip: an appliance installs nothing); this machine's pip unpacks the wheels into it, choosing them for the
    target's platform, and compiles every module ahead of time (unchecked-hash .pyc files: the root is read-only,
    so nothing could be cached at run time, and no file time goes into them). Under qemu-user for another
    architecture, pip itself would run emulated, and take minutes."""
    host.sh("chroot", root, "python3", "-m", "venv", "--without-pip", VENV, log=log)
    site = os.path.join(root, VENV.lstrip("/"), "lib", "python3.11", "site-packages")
    m = recipe.machine
    platforms = [f"linux_{m}", f"manylinux_2_36_{m}", f"manylinux_2_28_{m}", f"manylinux_2_26_{m}",
                 f"manylinux_2_17_{m}", f"manylinux2014_{m}", "any"]
    target = ["--no-index", "--find-links", wheels, "--no-compile", "--only-binary=:all:", "--python-version",
              "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
              *[a for p in platforms for a in ("--platform", p)], "--target", site, "--upgrade"]
    # the dependencies: the lock's versions, every wheel checked against its hash once more
    host.sh(sys.executable, "-m", "pip", "install", "--require-hashes", *target, "-r", LOCK, log=log)
    # the agent, built here from its source tree (no registry hash to check); its dependencies are in already
    host.sh(sys.executable, "-m", "pip", "install", "--no-deps", *target, "hearth-edge", log=log)
    # scripts pip wrote for this machine's Python; the agent's one command is written for the target's
    shutil.rmtree(os.path.join(site, "bin"), ignore_errors=True)
    _write(root, f"{VENV}/bin/hearth", LAUNCHER, 0o755)
    host.sh(sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
            "-d", site[len(root):], site, log=log)


def customize(recipe: Recipe, root: str, wheels: str, source: str, log):
    """Everything after the packages: the agent, its services, the read-only layout."""
    chroot = lambda *a: host.sh("chroot", root, *a, log=log)          # noqa: E731
    install_agent(recipe, root, wheels, log)
    chroot("/opt/hearth/venv/bin/python", "-c", NATIVE_CHECK)
    shutil.copy(os.path.join(source, "README.md"), os.path.join(root, "opt/hearth/README.md"))
    chroot("useradd", "--system", "--home-dir", "/var/lib/hearth", "--no-create-home", "--shell",
           "/usr/sbin/nologin", "hearth")
    units = ["hearth.service", "hearth-firstboot.service", "hearth-health.service", "hearth-enroll.service",
             "hearth-update.path"]   # hearth-update.service (started by the .path) is copied below
    if os.path.exists(os.path.join(root, "usr/sbin/wpa_supplicant")):
        units.append("hearth-wifi.service")       # boards with Wi-Fi (the recipe installs wpasupplicant)
    for unit in [*units, "hearth-update.service"]:
        shutil.copy(os.path.join(UNITS, unit), os.path.join(root, "etc/systemd/system", unit))
    os.symlink(f"{VENV}/bin/hearth", os.path.join(root, "usr/local/bin/hearth"))
    _write(root, "/etc/fstab", FSTAB)
    _write(root, "/etc/hostname", "hearth\n")
    _write(root, "/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 hearth\n")
    _write(root, "/etc/systemd/network/80-hearth-dhcp.network", NETWORK)
    _write(root, "/etc/systemd/journald.conf.d/hearth.conf", JOURNALD.format(
        console="yes" if recipe.console else "no"))
    _write(root, "/etc/machine-id", "")          # empty: systemd makes a transient one on the read-only root
    for d in ("var/lib/hearth", "efi"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    chroot("systemctl", "enable", "systemd-networkd", *units)
    chroot("systemctl", "mask", "systemd-networkd-wait-online.service", "apt-daily.timer",
           "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer")
    chroot("passwd", "--lock", "root")
    # drivers an appliance never loads (graphics, cameras, sound, …): a smaller root, faster updates
    kernels = os.listdir(os.path.join(root, "usr/lib/modules"))
    for version in kernels:
        for sub in recipe.modules_drop:
            shutil.rmtree(os.path.join(root, "usr/lib/modules", version, "kernel", sub), ignore_errors=True)
        chroot("depmod", "-a", version)
    signer = os.environ.get("HEARTH_IMAGE_SIGNER", "")
    if signer:                                 # update bundles must be signed by the key that signed the image
        _write(root, "/etc/hearth/update-keys", signer + "\n")
    if os.environ.get("HEARTH_IMAGE_DEBUG_CONSOLE") == "1":
        # test images only: a root shell on the serial console, so a test can drive the device
        tty = recipe.console.split(",")[0]
        _write(root, f"/etc/systemd/system/serial-getty@{tty}.service.d/autologin.conf",
               "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud "
               "115200,57600,38400,9600 %I $TERM\n")
    # what `hearth update apply` checks a bundle against: its board, and its version as the first version floor
    _write(root, "/etc/hearth/image.json", json.dumps({
        "board": recipe.board, "version": os.environ.get("HEARTH_IMAGE_VERSION", ""),
        "debug_console": os.environ.get("HEARTH_IMAGE_DEBUG_CONSOLE") == "1"}, sort_keys=True) + "\n")
    fleet = os.environ.get("HEARTH_IMAGE_FLEET_KEY", "")
    if fleet:                                  # this image applies only seeds its fleet signed
        _write(root, "/etc/hearth/fleet.pub", fleet + "\n")


def packages_of(root: str) -> dict[str, str]:
    out = host.sh("chroot", root, "dpkg-query", "-W", "-f", "${Package}\t${Version}\n").stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def python_packages_of(root: str) -> dict[str, str]:
    from importlib.metadata import distributions
    site = os.path.join(root, VENV.lstrip("/"), "lib", "python3.11", "site-packages")
    return {d.metadata["Name"]: d.version for d in distributions(path=[site])}


def packages(recipe: Recipe) -> list[str]:
    """The Debian packages the root file system is made of."""
    return BASE_PACKAGES + [recipe.kernel] + EFI_PACKAGES.get(recipe.bootloader, []) + list(recipe.packages)


def mmdebstrap_args(recipe: Recipe, root: str, wheels: str, source: str) -> list[str]:
    """The mmdebstrap command that makes the root file system (the customize hook runs the rest, here in
    Python, inside mmdebstrap's hook: it has /proc and /dev mounted in the tree). It runs in a mount namespace of
    its own: the mounts it makes in the tree (/proc, /sys, /dev/pts, /dev/shm) go with its last process, so a
    build that is killed leaves none on the host (one killed outside one did, under /tmp, until unmounted)."""
    modules = "\n".join(recipe.initramfs_modules) + "\n"
    setup = (f'mkdir -p "$1/etc/initramfs-tools/conf.d" && printf "MODULES=list\\nCOMPRESS=zstd\\n" > '
             f'"$1/etc/initramfs-tools/conf.d/hearth.conf" && printf {shlex.quote(modules)} > '
             f'"$1/etc/initramfs-tools/modules"')
    return ["unshare", "--mount", "--propagation", "private",
            "mmdebstrap", "--variant=minbase", f"--architectures={recipe.arch}",
            f"--components={','.join(recipe.components)}", f"--include={','.join(packages(recipe))}",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*", f"--setup-hook={setup}",
            "--customize-hook=rm -f \"$1\"/boot/*.dpkg-bak \"$1\"/boot/*.new",
            f"--customize-hook={shlex.quote(sys.executable)} -m edge.images.rootfs customize {recipe.board} \"$1\" "
            f"{shlex.quote(wheels)} {shlex.quote(source)}",
            recipe.suite, root]


def rootfs(recipe: Recipe, root: str, wheels: str, source: str, epoch: int, log):
    host.sh(*mmdebstrap_args(recipe, root, wheels, source), log=log,
            env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "customize":
    customize(load(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], lambda m: print(m, flush=True))
