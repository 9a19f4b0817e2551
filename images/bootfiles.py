"""The boot partition's files: the bootloader, slot a's kernel and initramfs, and what says to boot slot a —
systemd-boot's loader.conf and entries, or the Raspberry Pi firmware's config.txt and slot a's cmdline.txt
(their texts are the A/B slot contract's, edge/provisioning/slots.py, which the device's updates rewrite)."""

import os

from edge.images.host import BuildError
from edge.images.recipe import Recipe
from edge.provisioning import slots

# the device trees each slot carries: every Pi 4 and Pi 3 variant Debian's kernel has (the firmware picks its
# own); the Pi 4 B's and the Pi 3 B's (which QEMU emulates) must be there
RASPI_DTBS = ("bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb")
RASPI_DTB_PREFIXES = ("bcm2711-rpi-", "bcm2837-rpi-3-")
EFI_NAMES = {"x86_64": ("systemd-bootx64.efi", "BOOTX64.EFI"), "aarch64": ("systemd-bootaa64.efi", "BOOTAA64.EFI")}


def generated(recipe: Recipe, disk_uuid: str) -> dict[str, str]:
    """{path on the FAT partition: text} of what says to boot slot a (pure: the plan shows it, the build writes
    it)."""
    if recipe.bootloader == "raspi-firmware":
        return {"config.txt": slots.raspi_config(recipe.board, "a"),
                "a/cmdline.txt": slots.raspi_cmdline("a", recipe.console, slots.mbr_id(disk_uuid))}
    entry = slots.loader_entry("a", recipe.console)
    return {"loader/loader.conf": slots.LOADER_CONF, f"loader/entries/{slots.entry_name(1, 'a')}": entry,
            f"loader/entries/{slots.FALLBACK}": slots.fallback_entry(entry, "a")}


def copied(recipe: Recipe) -> list[str]:
    """The paths on the FAT partition that are copied from the root file system."""
    if recipe.bootloader == "raspi-firmware":
        return ["the firmware (raspi-firmware's files, start4.elf among them)", "a/vmlinuz", "a/initrd.img",
                f"a/*.dtb (the device trees {', '.join(p + '*' for p in RASPI_DTB_PREFIXES)})"]
    return [f"EFI/BOOT/{EFI_NAMES[recipe.machine][1]}", "a/vmlinuz", "a/initrd.img"]


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


def raspi_boot_files(recipe: Recipe, root: str) -> dict[str, str]:
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
    files.update({"a/vmlinuz": vmlinuz, "a/initrd.img": initrd})
    files.update({f"a/{d}": os.path.join(dtbs, d) for d in sorted(os.listdir(dtbs))
                  if d.endswith(".dtb") and d.startswith(RASPI_DTB_PREFIXES)})
    return files


def efi_boot_files(recipe: Recipe, root: str) -> dict[str, str]:
    _, vmlinuz, initrd = kernel_files(recipe, root)
    src, dst = EFI_NAMES[recipe.machine]
    return {f"EFI/BOOT/{dst}": os.path.join(root, "usr/lib/systemd/boot/efi", src),
            "a/vmlinuz": vmlinuz, "a/initrd.img": initrd}


def boot_files(recipe: Recipe, root: str, seed: str | None, disk_uuid: str) -> dict[str, str]:
    """{path on the FAT partition: source file}: the bootloader, slot a's kernel and initramfs (and device
    trees), what says to boot slot a (written to a staging directory next to the root), and the seed."""
    staging = os.path.join(os.path.dirname(root), "bootfiles")
    if recipe.bootloader == "raspi-firmware":
        files = raspi_boot_files(recipe, root)
    else:
        files = efi_boot_files(recipe, root)
    for inside, text in generated(recipe, disk_uuid).items():
        path = os.path.join(staging, inside.replace("/", "_"))
        os.makedirs(staging, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        files[inside] = path
    if seed:
        files["hearth-seed.toml"] = seed
        sig = os.path.join(os.path.dirname(os.path.abspath(seed)), "hearth-seed.sig")
        if os.path.exists(sig):
            files["hearth-seed.sig"] = sig
    return files
