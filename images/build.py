"""`hearth image build BOARD`: a flashable disk image from Debian packages and the agent.

Steps (each one's output is a file under the work directory; the image is made without loop mounts):
  1. wheels: the agent (its native modules built here, REQUIRE_NATIVE=1) and its dependencies for the target
     from the package registry: exactly images/requirements.lock's versions, transitive ones included, each
     wheel checked against the lock's SHA-256 (pip --require-hashes) when downloaded and again when installed;
  2. root file system: mmdebstrap from Debian's packages, with an initramfs of only the recipe's drivers,
     the agent in /opt/hearth/venv, its systemd unit, the first-boot service, a read-only root with
     /var/lib/hearth on the data partition and logs in RAM;
  3. boot partition (FAT): the bootloader and slot A's kernel and initramfs (and a seed, if given);
  4. root-a from the tree, an empty root-b for updates, an empty data file system;
  5. a partitioned image, compressed, with its SHA-256, a JSON manifest and an Ed25519 signature.
SOURCE_DATE_EPOCH fixes file times, file system UUIDs and the partition table's ids, so the same inputs give
the same image as far as Debian's archive (which moves) allows; the manifest records every package version.
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict

from edge.flash import sha256_of, signed_bytes
from edge.update import FALLBACK, fallback_entry
from images import disk
from images.recipe import Recipe, RecipeError, load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVISIONING = os.path.join(REPO, "provisioning")
BASE_PACKAGES = ["systemd", "systemd-sysv", "udev", "kmod", "initramfs-tools", "zstd", "python3", "python3-venv",
                 "e2fsprogs", "dosfstools", "fdisk"]
EFI_PACKAGES = {"systemd-boot": ["systemd-boot-efi", "systemd-boot"]}   # the EFI binary; bless-boot, bootctl
HOST_TOOLS = ["mmdebstrap", "mkfs.vfat", "mcopy", "mmd", "mkfs.ext4", "sfdisk", "zstd"]
NAMESPACE = uuid.UUID("5c0f2c4e-7d0b-4e43-9b3a-6b0d3f1e2a11")


class BuildError(Exception):
    pass


def _uuid(seed: str) -> str:
    return str(uuid.uuid5(NAMESPACE, seed))


def _sh(*args, log=None, **kw):
    if log:
        log("$ " + " ".join(shlex.quote(str(a)) for a in args))
    try:
        return subprocess.run([str(a) for a in args], check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError:
        raise BuildError(f"{args[0]} is not installed; `make image` installs what the build needs") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{args[0]} failed ({exc.returncode}):\n{(exc.stderr or exc.stdout or '')[-3000:]}") from None


def ensure_binfmt(machine: str, log):
    """Register qemu-user for `machine` with binfmt_misc (what systemd-binfmt does at boot; containers and CI
    runners often have binfmt_misc unmounted). The F flag keeps the interpreter open, so chroots need no copy."""
    entry = f"/proc/sys/fs/binfmt_misc/qemu-{machine}"
    if os.path.exists(entry):
        return
    conf = f"/usr/lib/binfmt.d/qemu-{machine}.conf"
    if not os.path.exists(conf):
        raise BuildError(f"building for {machine} on {os.uname().machine} needs qemu-user-static "
                         f"(no {conf}); `make image` installs it")
    if not os.path.exists("/proc/sys/fs/binfmt_misc/register"):
        _sh("mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc", log=log)
    with open(conf) as f:
        rule = next(line.strip() for line in f if line.strip() and not line.startswith("#"))
    log(f"registering {conf} with binfmt_misc")
    with open("/proc/sys/fs/binfmt_misc/register", "w") as f:
        f.write(rule)
    if not os.path.exists(entry):
        raise BuildError(f"could not register qemu-{machine} with binfmt_misc")


def check_host(recipe: Recipe, log=print):
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        raise BuildError(f"missing build tools: {', '.join(missing)} (Debian packages mmdebstrap, dosfstools, "
                         "mtools, e2fsprogs, fdisk, zstd)")
    if os.geteuid() != 0:
        raise BuildError("building an image needs root (mmdebstrap's root mode keeps file ownership exact)")
    if recipe.machine != os.uname().machine:
        ensure_binfmt(recipe.machine, log)


def dependency_pins() -> list[str]:
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


# every runtime dependency, transitive ones too, pinned with the hash of every file the registry has for it
LOCK = os.path.join(REPO, "images", "requirements.lock")


def _download(machine: str, dest: str, log):
    """The dependencies' wheels for `machine`, exactly the lock's versions, each file checked against its hash."""
    _sh(sys.executable, "-m", "pip", "download", "--require-hashes", "--only-binary=:all:", "--python-version",
        "3.11", "--implementation", "cp", "--platform", f"manylinux_2_36_{machine}", "--platform",
        f"manylinux_2_28_{machine}", "--platform", f"manylinux_2_17_{machine}", "--platform",
        f"manylinux2014_{machine}", "--platform", "any", "-d", dest, "-r", LOCK, log=log)


CROSS = {"aarch64": {"cc": "aarch64-linux-gnu-gcc", "sysconfig": "_sysconfigdata__linux_aarch64-linux-gnu",
                     "platform": "linux-aarch64", "openssl": "/usr/include/aarch64-linux-gnu/openssl",
                     "packages": "gcc-aarch64-linux-gnu libpython3.11-dev:arm64 libssl-dev:arm64"}}


def foreign_agent_wheel(recipe: Recipe, wheels: str, log):
    """The agent's wheel for another architecture, cross-compiled here with Debian's multiarch cross tool chain:
    the target's own Python headers and build variables (libpython3.11-dev:arm64 ships them, with CC set to the
    cross compiler) and its OpenSSL. Seconds, where compiling inside the target under qemu-user took minutes;
    the customize step then imports the modules and checks them against hashlib inside the target."""
    cross = CROSS.get(recipe.machine)
    if cross is None:
        raise BuildError(f"no cross tool chain is set up for {recipe.machine}")
    sysconfig_py = f"/usr/lib/python3.11/{cross['sysconfig']}.py"
    missing = [p for p in (sysconfig_py, cross["openssl"]) if not os.path.exists(p)]
    if shutil.which(cross["cc"]) is None or missing:
        raise BuildError(f"cross-compiling the agent for {recipe.arch} needs the Debian packages {cross['packages']} "
                         f"(after `dpkg --add-architecture {recipe.arch}`); `make image` installs them")
    work = os.path.join(os.path.dirname(wheels), "cross")
    shutil.rmtree(work, ignore_errors=True)
    src, sysconfig_dir = os.path.join(work, "src"), os.path.join(work, "sysconfig")
    os.makedirs(src)
    os.makedirs(sysconfig_dir)
    shutil.copy(sysconfig_py, sysconfig_dir)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "build", "*.egg-info")
    for name in ("edge", "native", "provisioning"):       # provisioning/: the package edge.provisioning
        shutil.copytree(os.path.join(REPO, name), os.path.join(src, name), ignore=ignore)
    env = {**os.environ, "REQUIRE_NATIVE": "1", "PYTHONPATH": sysconfig_dir,
           "_PYTHON_SYSCONFIGDATA_NAME": cross["sysconfig"], "_PYTHON_HOST_PLATFORM": cross["platform"]}
    try:
        _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src,
            log=log, env=env, cwd=src)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not any(f.endswith(f"_{recipe.machine}.whl") for f in os.listdir(wheels)):
        raise BuildError(f"the cross build made no {recipe.machine} wheel: {os.listdir(wheels)}")


def build_wheels(recipe: Recipe, wheels: str, log):
    """The agent's wheel (native modules compiled for the target) and binary wheels of its dependencies."""
    os.makedirs(wheels, exist_ok=True)
    if recipe.machine == os.uname().machine:
        env = {**os.environ, "REQUIRE_NATIVE": "1"}
        _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO,
            log=log, env=env)
    else:
        foreign_agent_wheel(recipe, wheels, log)
    _download(recipe.machine, wheels, log)


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
    _sh("chroot", root, "python3", "-m", "venv", "--without-pip", VENV, log=log)
    site = os.path.join(root, VENV.lstrip("/"), "lib", "python3.11", "site-packages")
    m = recipe.machine
    platforms = [f"linux_{m}", f"manylinux_2_36_{m}", f"manylinux_2_28_{m}", f"manylinux_2_26_{m}",
                 f"manylinux_2_17_{m}", f"manylinux2014_{m}", "any"]
    target = ["--no-index", "--find-links", wheels, "--no-compile", "--only-binary=:all:", "--python-version",
              "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
              *[a for p in platforms for a in ("--platform", p)], "--target", site, "--upgrade"]
    # the dependencies: the lock's versions, every wheel checked against its hash once more
    _sh(sys.executable, "-m", "pip", "install", "--require-hashes", *target, "-r", LOCK, log=log)
    # the agent, built here from this tree (no registry hash to check); its dependencies are in already
    _sh(sys.executable, "-m", "pip", "install", "--no-deps", *target, "hearth-edge", log=log)
    # scripts pip wrote for this machine's Python; the agent's one command is written for the target's
    shutil.rmtree(os.path.join(site, "bin"), ignore_errors=True)
    _write(root, f"{VENV}/bin/hearth", LAUNCHER, 0o755)
    _sh(sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
        "-d", site[len(root):], site, log=log)


def customize(recipe: Recipe, root: str, wheels: str, log):
    """Everything after the packages: the agent, its services, the read-only layout."""
    chroot = lambda *a: _sh("chroot", root, *a, log=log)          # noqa: E731
    install_agent(recipe, root, wheels, log)
    chroot("/opt/hearth/venv/bin/python", "-c", NATIVE_CHECK)
    shutil.copy(os.path.join(REPO, "README.md"), os.path.join(root, "opt/hearth/README.md"))
    chroot("useradd", "--system", "--home-dir", "/var/lib/hearth", "--no-create-home", "--shell",
           "/usr/sbin/nologin", "hearth")
    units = ["hearth.service", "hearth-firstboot.service", "hearth-health.service", "hearth-enroll.service"]
    if os.path.exists(os.path.join(root, "usr/sbin/wpa_supplicant")):
        units.append("hearth-wifi.service")       # boards with Wi-Fi (the recipe installs wpasupplicant)
    for unit in units:
        shutil.copy(os.path.join(PROVISIONING, unit), os.path.join(root, "etc/systemd/system", unit))
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
    out = _sh("chroot", root, "dpkg-query", "-W", "-f", "${Package}\t${Version}\n").stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def python_packages_of(root: str) -> dict[str, str]:
    from importlib.metadata import distributions
    site = os.path.join(root, VENV.lstrip("/"), "lib", "python3.11", "site-packages")
    return {d.metadata["Name"]: d.version for d in distributions(path=[site])}


def rootfs(recipe: Recipe, root: str, wheels: str, epoch: int, log):
    include = BASE_PACKAGES + [recipe.kernel] + EFI_PACKAGES.get(recipe.bootloader, []) + list(recipe.packages)
    modules = "\n".join(recipe.initramfs_modules) + "\n"
    setup = (f'mkdir -p "$1/etc/initramfs-tools/conf.d" && printf "MODULES=list\\nCOMPRESS=zstd\\n" > '
             f'"$1/etc/initramfs-tools/conf.d/hearth.conf" && printf {shlex.quote(modules)} > '
             f'"$1/etc/initramfs-tools/modules"')
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    _sh("mmdebstrap", "--variant=minbase", f"--architectures={recipe.arch}",
        f"--components={','.join(recipe.components)}", f"--include={','.join(include)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*", f"--setup-hook={setup}",
        "--customize-hook=rm -f \"$1\"/boot/*.dpkg-bak \"$1\"/boot/*.new",
        # the rest in Python, inside mmdebstrap's hook (it has /proc and /dev mounted in the tree)
        f"--customize-hook={shlex.quote(sys.executable)} -m images.build customize {recipe.board} \"$1\" "
        f"{shlex.quote(wheels)}",
        recipe.suite, root, log=log, env={**env, "PYTHONPATH": REPO}, cwd=REPO)


# systemd-boot picks the first entry matching `default` in its sorted list: newest generation first, and any
# entry whose boot-counting tries are used up last. So a new slot's entry (hearth-N-b+3.conf) boots first, and
# after three failed trials the previous slot's entry does. hearth-0-committed.conf (generation 0: after every
# other usable entry) names the committed slot: it boots when the other entries are gone or unreadable
# (edge/update.py keeps it naming the committed slot).
LOADER_CONF = "default hearth-*\ntimeout 0\nconsole-mode keep\neditor no\n"


def loader_entry(slot: str, console: str) -> str:
    return (f"title Hearth (slot {slot})\nlinux /{slot}/vmlinuz\ninitrd /{slot}/initrd.img\n"
            f"options root=PARTLABEL=root-{slot} ro rootwait console=tty0 console={console} "
            f"systemd.show_status=1 hearth.slot={slot}\n")


# Raspberry Pi: the GPU firmware reads config.txt from the FAT partition; os_prefix picks the slot's directory
# (its kernel, initramfs, cmdline.txt and device trees). A trial boot of a new slot is the firmware's tryboot:
# `reboot "0 tryboot"` makes the next boot, once, read tryboot.txt (which names the new slot) instead; the health
# check commits by rewriting config.txt, and any failed trial falls back to config.txt's slot (edge/update.py).
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
# the device trees each slot carries: every Pi 4 and Pi 3 variant Debian's kernel has (the firmware picks its
# own); the Pi 4 B's and the Pi 3 B's (which QEMU emulates) must be there
RASPI_DTBS = ("bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb")
RASPI_DTB_PREFIXES = ("bcm2711-rpi-", "bcm2837-rpi-3-")


def raspi_cmdline(slot: str, console: str, disk_id: str) -> str:
    number = {"a": 2, "b": 3}[slot]
    return (f"console=tty0 console={console} root=PARTUUID={disk_id}-{number:02d} ro rootwait "
            f"systemd.show_status=1 hearth.slot={slot}\n")


def mbr_id(disk_uuid: str) -> str:
    """The MBR disk signature (8 hex digits) sfdisk writes for this disk id; PARTUUIDs are ID-NN."""
    return disk_uuid.replace("-", "")[:8].lower()


def kernel_files(recipe: Recipe, root: str) -> tuple[str, str, str]:
    """(version, vmlinuz, initrd) of the root's newest kernel."""
    boot = os.path.join(root, "boot")
    kernels = sorted(f for f in os.listdir(boot) if f.startswith("vmlinuz-"))
    if not kernels:
        raise BuildError(f"no kernel in {boot}: is {recipe.kernel} right for {recipe.arch}?")
    version = kernels[-1][len("vmlinuz-"):]
    initrd = os.path.join(boot, f"initrd.img-{version}")
    if not os.path.exists(initrd):
        raise BuildError(f"no initramfs for kernel {version}")
    return version, os.path.join(boot, kernels[-1]), initrd


def raspi_boot_files(recipe: Recipe, root: str, staging: str, disk_id: str) -> dict[str, str]:
    version, vmlinuz, initrd = kernel_files(recipe, root)
    firmware = os.path.join(root, "usr/lib/raspi-firmware")
    if not os.path.isdir(firmware):
        raise BuildError(f"no {firmware}: the recipe must install raspi-firmware (component non-free-firmware)")
    files = {name: os.path.join(firmware, name) for name in sorted(os.listdir(firmware))
             if os.path.isfile(os.path.join(firmware, name))}
    if "start4.elf" not in files:
        raise BuildError(f"raspi-firmware has no start4.elf in {firmware}: {sorted(files)}")
    dtbs = os.path.join(root, "usr/lib", f"linux-image-{version}", "broadcom")
    missing = [d for d in RASPI_DTBS if not os.path.exists(os.path.join(dtbs, d))]
    if missing:
        raise BuildError(f"kernel {version} lacks the device trees {', '.join(missing)} (in {dtbs})")
    _write(staging, "config.txt", RASPI_CONFIG.format(board=recipe.board, slot="a"))
    _write(staging, "cmdline-a.txt", raspi_cmdline("a", recipe.console, disk_id))
    files.update({"config.txt": os.path.join(staging, "config.txt"), "a/vmlinuz": vmlinuz, "a/initrd.img": initrd,
                  "a/cmdline.txt": os.path.join(staging, "cmdline-a.txt")})
    files.update({f"a/{d}": os.path.join(dtbs, d) for d in sorted(os.listdir(dtbs))
                  if d.endswith(".dtb") and d.startswith(RASPI_DTB_PREFIXES)})
    return files


def boot_files(recipe: Recipe, root: str, seed: str | None, disk_id: str = "") -> dict[str, str]:
    """{path on the FAT partition: source}: the bootloader, slot A's kernel and initramfs, and what says to boot
    slot A (loader entries for systemd-boot; config.txt and cmdline.txt for the Pi firmware)."""
    staging = os.path.join(os.path.dirname(root), "bootfiles")
    os.makedirs(staging, exist_ok=True)
    if recipe.bootloader == "raspi-firmware":
        files = raspi_boot_files(recipe, root, staging, disk_id)
    else:
        files = efi_boot_files(recipe, root, staging)
    if seed:
        files["hearth-seed.toml"] = seed
        sig = os.path.join(os.path.dirname(os.path.abspath(seed)), "hearth-seed.sig")
        if os.path.exists(sig):
            files["hearth-seed.sig"] = sig
    return files


def efi_boot_files(recipe: Recipe, root: str, staging: str) -> dict[str, str]:
    _, vmlinuz, initrd = kernel_files(recipe, root)
    efi_name = {"x86_64": ("systemd-bootx64.efi", "BOOTX64.EFI"), "aarch64": ("systemd-bootaa64.efi", "BOOTAA64.EFI")}
    src, dst = efi_name[recipe.machine]
    _write(staging, "loader.conf", LOADER_CONF)
    _write(staging, "hearth-1-a.conf", loader_entry("a", recipe.console))
    _write(staging, FALLBACK, fallback_entry(loader_entry("a", recipe.console), "a"))
    files = {f"EFI/BOOT/{dst}": os.path.join(root, "usr/lib/systemd/boot/efi", src),
             "loader/loader.conf": os.path.join(staging, "loader.conf"),
             "loader/entries/hearth-1-a.conf": os.path.join(staging, "hearth-1-a.conf"),
             f"loader/entries/{FALLBACK}": os.path.join(staging, FALLBACK),
             "a/vmlinuz": vmlinuz, "a/initrd.img": initrd}
    return files


def sign_manifest(manifest: dict, key_path: str) -> dict:
    from edge.identity import Identity
    key = Identity.load(key_path)
    body = dict(manifest)
    body.pop("signature", None)
    body["signed_by"] = key.node_id
    canonical = signed_bytes(body)
    import base64
    body["signature"] = base64.b64encode(key.sign(canonical)).decode()
    return body


def build(board: str, out_dir: str, *, key_path: str, version: str = "0.1.0", seed: str | None = None,
          epoch: int | None = None, keep_work: bool = False, fleet_key: str = "", debug_console: bool = False,
          log=print) -> dict:
    """Build BOARD's image into out_dir; returns the signed manifest (also written next to the image)."""
    recipe = load(board)
    if recipe.unsupported:
        raise RecipeError(f"{board}: {recipe.unsupported}")
    if recipe.bootloader not in ("systemd-boot", "raspi-firmware"):
        raise BuildError(f"{board}: the {recipe.bootloader} boot layout is not written")
    check_host(recipe, log)
    if fleet_key:
        from edge.identity import public_key_of
        public_key_of(fleet_key)
        os.environ["HEARTH_IMAGE_FLEET_KEY"] = fleet_key      # read by the customize hook
    from edge.identity import Identity
    os.environ["HEARTH_IMAGE_SIGNER"] = Identity.load(key_path).node_id
    os.environ["HEARTH_IMAGE_DEBUG_CONSOLE"] = "1" if debug_console else "0"
    os.environ["HEARTH_IMAGE_VERSION"] = version
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", epoch or time.time()))
    started = time.monotonic()
    work = os.path.join(out_dir, f"work-{board}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root = os.path.join(work, "rootfs")
    wheels = os.path.join(work, "wheels")
    steps = {}

    def step(name, fn, *args):
        t0 = time.monotonic()
        log(f"[{board}] {name}…")
        fn(*args)
        steps[name] = round(time.monotonic() - t0, 1)

    try:
        step("wheels", build_wheels, recipe, wheels, log)
        step("root file system", rootfs, recipe, root, wheels, epoch, log)
        packages = packages_of(root)
        python = python_packages_of(root)
        parts, total = disk.layout(recipe.partitions.boot, recipe.partitions.root, recipe.partitions.data)
        files = {p: os.path.join(work, f"{p}.fs") for p in ("boot", "root-a", "root-b", "data")}
        seed_id = f"{board}-{version}-{epoch}"
        disk_uuid = _uuid(seed_id + "disk")
        table = "mbr" if recipe.bootloader == "raspi-firmware" else "gpt"

        def filesystems():
            disk.fat_image(files["boot"], parts[0].size, boot_files(recipe, root, seed, mbr_id(disk_uuid)),
                           hashlib.sha256(seed_id.encode()).hexdigest()[:8], epoch)
            disk.ext4_image(files["root-a"], parts[1].size, root, "root-a", _uuid(seed_id + "a"), epoch)
            disk.shrink_ext4(files["root-a"])
            disk.ext4_image(files["root-b"], parts[2].size, None, "root-b", _uuid(seed_id + "b"), epoch)
            disk.ext4_image(files["data"], parts[3].size, None, disk.DATA_LABEL, _uuid(seed_id + "d"), epoch)
        step("file systems", filesystems)
        name = f"hearth-{board}-{version}"
        image = os.path.join(out_dir, f"{name}.img")
        step("disk image", disk.assemble, image, parts, total,
             disk.sfdisk_script(parts, table, recipe.machine, disk_uuid), files)
        step("compress", _sh, "zstd", "-q", "-f", "-T0", "-9", image, "-o", image + ".zst")
        manifest = {
            "format": 1, "board": board, "arch": recipe.arch, "version": version, "suite": recipe.suite,
            "source_date_epoch": epoch, "recipe": os.path.basename(recipe.path),
            "image": {"file": os.path.basename(image), "size": os.path.getsize(image), "sha256": sha256_of(image)},
            "compressed": {"file": os.path.basename(image) + ".zst", "size": os.path.getsize(image + ".zst"),
                           "sha256": sha256_of(image + ".zst")},
            "partitions": [asdict(p) for p in parts], "table": table, "bootloader": recipe.bootloader,
            "root_used_bytes": int(_sh("du", "-sb", "--exclude=proc", root).stdout.split()[0]),
            "packages": packages, "python": python, "steps_seconds": steps,
            "seed": bool(seed), "fleet": fleet_key or None,
            # signed: a root shell on the serial console is never a property of an image no one can see
            "debug_console": bool(debug_console),
        }
        manifest = sign_manifest(manifest, key_path)
        with open(os.path.join(out_dir, f"{name}.manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        log(f"[{board}] {image} ({manifest['image']['size'] >> 20} MiB, {manifest['compressed']['size'] >> 20} MiB "
            f"compressed) in {time.monotonic() - started:.0f} s")
        return manifest
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "customize":
    customize(load(sys.argv[2]), sys.argv[3], sys.argv[4], lambda m: print(m, flush=True))
