"""Board recipes: one small TOML file per board (images/BOARD.toml), read and checked here.

A recipe names the architecture, the Debian suite and components, the kernel and bootloader, the console, the
drivers the initramfs needs, extra packages, and the partition sizes. A board Debian cannot build for (its
kernel or BSP lives elsewhere) says so in `unsupported`, and the build stops with that text.
"""

import os
import tomllib
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
BOOTLOADERS = ("systemd-boot", "raspi-firmware", "nvidia-uefi")


class RecipeError(Exception):
    pass


@dataclass(frozen=True)
class Partitions:
    boot: int
    root: int
    data: int


@dataclass(frozen=True)
class Recipe:
    board: str
    description: str
    arch: str
    suite: str
    components: tuple[str, ...]
    kernel: str
    bootloader: str
    console: str
    initramfs_modules: tuple[str, ...]
    packages: tuple[str, ...]
    partitions: Partitions
    modules_drop: tuple[str, ...] = ()
    unsupported: str = ""
    path: str = field(default="", compare=False)

    @property
    def machine(self) -> str:
        return ARCHES[self.arch]


def boards() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(HERE) if f.endswith(".toml"))


def load(board: str, directory: str = HERE) -> Recipe:
    path = os.path.join(directory, f"{board}.toml")
    if not os.path.isfile(path):
        raise RecipeError(f"no recipe for board {board!r}; boards: {', '.join(boards())}")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path} is not valid TOML: {exc}") from None
    return parse(raw, path)


def parse(raw: dict, path: str = "<recipe>") -> Recipe:
    def need(key, kind):
        if key not in raw:
            raise RecipeError(f"{path}: {key} is missing")
        value = raw[key]
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RecipeError(f"{path}: {key} must be a list of strings")
            return tuple(value)
        if not isinstance(value, kind):
            raise RecipeError(f"{path}: {key} must be {kind.__name__}")
        return value

    known = {"board", "description", "arch", "suite", "components", "kernel", "bootloader", "console",
             "initramfs_modules", "packages", "partitions", "unsupported", "modules_drop"}
    extra = set(raw) - known
    if extra:
        raise RecipeError(f"{path}: unknown keys {', '.join(sorted(extra))}; known: {', '.join(sorted(known))}")
    arch = need("arch", str)
    if arch not in ARCHES:
        raise RecipeError(f"{path}: arch = {arch!r}; allowed: {', '.join(ARCHES)}")
    bootloader = need("bootloader", str)
    if bootloader not in BOOTLOADERS:
        raise RecipeError(f"{path}: bootloader = {bootloader!r}; allowed: {', '.join(BOOTLOADERS)}")
    parts = raw.get("partitions")
    if not isinstance(parts, dict) or set(parts) != {"boot", "root", "data"}:
        raise RecipeError(f"{path}: [partitions] needs exactly boot, root and data (MiB)")
    for k, v in parts.items():
        if not isinstance(v, int) or not 16 <= v <= 65536:
            raise RecipeError(f"{path}: partitions.{k} = {v!r}; a size in MiB, 16..65536")
    return Recipe(need("board", str), need("description", str), arch, need("suite", str), need("components", list),
                  need("kernel", str), bootloader, need("console", str), need("initramfs_modules", list),
                  need("packages", list), Partitions(**parts), tuple(raw.get("modules_drop", ())),
                  str(raw.get("unsupported", "")).strip(), path)
