"""`hearth image build BOARD`: a flashable disk image from Debian packages and the agent.

Steps (each one's output is a file under the work directory; the image is made without loop mounts):
  1. wheels: the agent (its native modules built here, REQUIRE_NATIVE=1) and its dependencies for the target
     from the package registry, exactly as images/requirements.lock pins them (wheels.py);
  2. root file system: mmdebstrap from Debian's packages, the agent, its units, a read-only layout (rootfs.py);
  3. boot partition (FAT): the bootloader and slot A's kernel and initramfs (and a seed, if given) (bootfiles.py);
  4. root-a from the tree, an empty root-b for updates, an empty data file system (disk.py);
  5. a partitioned image, compressed, with its SHA-256, a JSON manifest and an Ed25519 signature.
SOURCE_DATE_EPOCH fixes file times, file system UUIDs and the partition table's ids, so the same inputs give
the same image as far as Debian's archive (which moves) allows; the manifest records every package version.
`hearth image build --dry-run` prints these steps for a board (plan.py) and builds nothing.
"""

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict

from edge.images import disk, host
from edge.images.bootfiles import boot_files
from edge.images.host import BuildError
from edge.images.recipe import Recipe, RecipeError, load
from edge.images.rootfs import packages_of, python_packages_of, rootfs
from edge.images.wheels import build_wheels
from edge.provisioning.host.flash import sha256_of, signed_bytes

NAMESPACE = uuid.UUID("5c0f2c4e-7d0b-4e43-9b3a-6b0d3f1e2a11")
WRITTEN = ("systemd-boot", "raspi-firmware")      # the boot layouts the builder writes


def _uuid(seed: str) -> str:
    return str(uuid.uuid5(NAMESPACE, seed))


def epoch_of(epoch: int | None = None) -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", epoch or time.time()))


def ids(board: str, version: str, epoch: int) -> dict[str, str]:
    """The disk's and each file system's id, derived from board, version and epoch (the same inputs, the same
    image)."""
    seed_id = f"{board}-{version}-{epoch}"
    return {"seed": seed_id, "disk": _uuid(seed_id + "disk"), "boot": hashlib.sha256(seed_id.encode()).hexdigest()[:8],
            "root-a": _uuid(seed_id + "a"), "root-b": _uuid(seed_id + "b"), "data": _uuid(seed_id + "d")}


def table_of(recipe: Recipe) -> str:
    return "mbr" if recipe.bootloader == "raspi-firmware" else "gpt"    # the Pi's firmware reads only MBR


def buildable(recipe: Recipe):
    """RecipeError or BuildError when this board's image cannot be built by this builder (whatever the host)."""
    if recipe.unsupported:
        raise RecipeError(f"{recipe.board}: {recipe.unsupported}")
    if recipe.bootloader not in WRITTEN:
        raise BuildError(f"{recipe.board}: the {recipe.bootloader} boot layout is not written")


def build(board: str, out_dir: str, *, key_path: str, version: str = "0.1.0", seed: str | None = None,
          epoch: int | None = None, keep_work: bool = False, fleet_key: str = "", debug_console: bool = False,
          source: str | None = None, log=print) -> dict:
    """Build BOARD's image into out_dir; returns the signed manifest (also written next to the image).
    source: the Hearth source tree the agent's wheel is built from (host.source_tree says which by default)."""
    recipe = load(board)
    buildable(recipe)
    source = host.need_source(source)
    host.check_host(recipe.machine, log)
    if fleet_key:
        from edge.identity import public_key_of
        public_key_of(fleet_key)
        os.environ["HEARTH_IMAGE_FLEET_KEY"] = fleet_key      # read by the customize hook
    from edge.identity import Identity
    os.environ["HEARTH_IMAGE_SIGNER"] = Identity.load(key_path).node_id
    os.environ["HEARTH_IMAGE_DEBUG_CONSOLE"] = "1" if debug_console else "0"
    os.environ["HEARTH_IMAGE_VERSION"] = version
    epoch = epoch_of(epoch)
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
        step("wheels", build_wheels, recipe, wheels, source, log)
        step("root file system", rootfs, recipe, root, wheels, source, epoch, log)
        packages = packages_of(root)
        python = python_packages_of(root)
        parts, total = disk.layout(recipe.partitions.boot, recipe.partitions.root, recipe.partitions.data)
        files = {p: os.path.join(work, f"{p}.fs") for p in ("boot", "root-a", "root-b", "data")}
        made = ids(board, version, epoch)
        table = table_of(recipe)

        def filesystems():
            disk.fat_image(files["boot"], parts[0].size, boot_files(recipe, root, seed, made["disk"]), made["boot"],
                           epoch)
            disk.ext4_image(files["root-a"], parts[1].size, root, "root-a", made["root-a"], epoch)
            disk.shrink_ext4(files["root-a"])
            disk.ext4_image(files["root-b"], parts[2].size, None, "root-b", made["root-b"], epoch)
            disk.ext4_image(files["data"], parts[3].size, None, disk.DATA_LABEL, made["data"], epoch)
        step("file systems", filesystems)
        name = f"hearth-{board}-{version}"
        image = os.path.join(out_dir, f"{name}.img")
        step("disk image", disk.assemble, image, parts, total,
             disk.sfdisk_script(parts, table, recipe.machine, made["disk"]), files)
        step("compress", host.sh, "zstd", "-q", "-f", "-T0", "-9", image, "-o", image + ".zst")
        manifest = {
            "format": 1, "board": board, "arch": recipe.arch, "version": version, "suite": recipe.suite,
            "source_date_epoch": epoch, "recipe": os.path.basename(recipe.path),
            "image": {"file": os.path.basename(image), "size": os.path.getsize(image), "sha256": sha256_of(image)},
            "compressed": {"file": os.path.basename(image) + ".zst", "size": os.path.getsize(image + ".zst"),
                           "sha256": sha256_of(image + ".zst")},
            "partitions": [asdict(p) for p in parts], "table": table, "bootloader": recipe.bootloader,
            "root_used_bytes": int(host.sh("du", "-sb", "--exclude=proc", root).stdout.split()[0]),
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
