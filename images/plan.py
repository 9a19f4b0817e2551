"""`hearth image build BOARD --dry-run`: the builder's plan for a board, as text: each step, the partitions, the
packages and the commands it would run, and what this machine lacks for it. Nothing is built, nothing is
written, no signing key is read. A board this builder cannot build (its recipe says what it needs) gets the plan
up to there and that text."""

import os
import shlex

from edge.images import disk, host
from edge.images.bootfiles import copied, generated
from edge.images.build import buildable, epoch_of, ids, table_of
from edge.images.host import BuildError
from edge.images.recipe import RecipeError, load
from edge.images.rootfs import UNITS, packages, mmdebstrap_args
from edge.images.wheels import CROSS, LOCK, agent_wheel_args, cross_missing, download_args

MiB = 1 << 20


def _cmd(args) -> str:
    return "$ " + " ".join(shlex.quote(str(a)) for a in args)


def _locked() -> int:
    with open(LOCK) as f:
        return sum(1 for line in f if line[:1].isalnum())


def plan(board: str, out_dir: str, *, version: str, seed: str | None = None, fleet_key: str = "",
         debug_console: bool = False, source: str | None = None, epoch: int | None = None) -> tuple[str, str | None]:
    """(the plan as text, what is missing for this board or None). RecipeError for a board with no recipe."""
    recipe = load(board)
    name = f"hearth-{board}-{version}"
    lines = [f"Plan for {name}: {recipe.description} (a dry run: nothing is built)",
             f"recipe      {recipe.path}",
             f"target      {recipe.arch} ({recipe.machine}), Debian {recipe.suite} ({', '.join(recipe.components)}), "
             f"kernel {recipe.kernel}, console {recipe.console}",
             f"bootloader  {recipe.bootloader}"]
    try:
        buildable(recipe)
    except (RecipeError, BuildError) as exc:
        return "\n".join(lines), str(exc)
    epoch = epoch_of(epoch)
    made = ids(board, version, epoch)
    work = os.path.join(out_dir, f"work-{board}")
    wheels, root = os.path.join(work, "wheels"), os.path.join(work, "rootfs")
    found = host.source_tree(source)
    tree = found or "SOURCE"
    native = os.uname().machine == recipe.machine
    how = ("its native modules compiled here (REQUIRE_NATIVE=1)" if native
           else f"cross-compiled with {CROSS.get(recipe.machine, {}).get('cc')}")
    lines += ["", "1. wheels (into " + wheels + ")",
              f"   the agent's wheel from {tree}, {how}",
              "   " + _cmd(agent_wheel_args(tree, wheels)),
              f"   {_locked()} locked dependencies for {recipe.machine}, each wheel checked against its SHA-256:",
              "   " + _cmd(download_args(recipe.machine, wheels))]
    pkgs = packages(recipe)
    lines += ["", f"2. root file system (into {root}, SOURCE_DATE_EPOCH={epoch})",
              f"   {len(pkgs)} Debian packages: {' '.join(pkgs)}",
              f"   initramfs (MODULES=list): {' '.join(recipe.initramfs_modules)}",
              f"   drivers left out: {' '.join(recipe.modules_drop) or 'none'}",
              "   " + _cmd(mmdebstrap_args(recipe, root, wheels, tree)),
              "   customize: the agent in /opt/hearth/venv (the lock's wheels, --require-hashes), its native kernels "
              "checked inside the target,",
              f"   units from {UNITS}, a read-only root, /var/lib/hearth on the data partition, logs in RAM,",
              "   /etc/hearth/image.json (board, version, debug console), /etc/hearth/update-keys (the signer's id)"
              + (", /etc/hearth/fleet.pub" if fleet_key else "")
              + ("; DEBUG: a root shell on the serial console" if debug_console else "")]
    parts, total = disk.layout(recipe.partitions.boot, recipe.partitions.root, recipe.partitions.data)
    boot = generated(recipe, made["disk"])
    lines += ["", "3. file systems",
              f"   boot    FAT32 {disk.BOOT_LABEL} (volume id {made['boot']}):",
              *[f"           {path} (written: {len(text.splitlines())} lines)" for path, text in boot.items()],
              *[f"           {path} (copied from the root)" for path in copied(recipe)],
              *([f"           hearth-seed.toml (from {seed})"] if seed else []),
              f"   root-a  ext4 {made['root-a']}, from the root file system, shrunk to its content",
              f"   root-b  ext4 {made['root-b']}, empty (the slot updates are written to)",
              f"   data    ext4 {disk.DATA_LABEL} {made['data']}, empty (grown to the disk at first boot)"]
    table = table_of(recipe)
    lines += ["", f"4. disk image {os.path.join(out_dir, name + '.img')}: {total // MiB} MiB, {table.upper()}",
              *[f"   {p.name:<7} at {p.start // MiB:>5} MiB, {p.size // MiB:>5} MiB" for p in parts],
              "   sfdisk script:",
              *["     " + line for line in disk.sfdisk_script(parts, table, recipe.machine, made["disk"]).splitlines()],
              "", f"5. compress: zstd -9 to {name}.img.zst",
              f"6. manifest {name}.manifest.json (SHA-256s, partitions, every package version), signed with --key"]
    lines += ["", "this machine:", *["   " + line for line in readiness(recipe, found)]]
    for path, text in boot.items():
        lines += ["", f"--- {path}", text.rstrip("\n")]
    return "\n".join(lines), None


def readiness(recipe, tree: str | None) -> list[str]:
    """What this machine has and lacks for the build (the plan does not depend on it)."""
    missing = host.missing_tools()
    tools = f"missing {', '.join(missing)} ({host.TOOL_PACKAGES})" if missing else "all there"
    out = [f"build tools: {tools}",
           "root: " + ("yes" if os.geteuid() == 0 else "no (a build runs as root: mmdebstrap's root mode)")]
    if recipe.machine != os.uname().machine:
        registered = os.path.exists(f"/proc/sys/fs/binfmt_misc/qemu-{recipe.machine}")
        out.append(f"qemu-user for {recipe.machine}: " + ("registered" if registered else
                   "to register" if os.path.exists(host.binfmt_conf(recipe.machine)) else "missing (qemu-user-static)"))
        out.append("cross tool chain: " + (cross_missing(recipe.machine, recipe.arch) or "there"))
    out.append("agent source: " + (tree or "none found (run from a checkout, or pass --source DIR)"))
    return out
