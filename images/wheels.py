"""The agent's wheels for the target: the agent itself (its native modules built here, REQUIRE_NATIVE=1, or
cross-compiled for another architecture) and its dependencies from the package registry, exactly
images/requirements.lock's versions, transitive ones included, each wheel checked against the lock's SHA-256
(pip --require-hashes) when downloaded and again when installed."""

import os
import shutil
import sys

from edge.images import host
from edge.images.host import BuildError
from edge.images.recipe import Recipe

HERE = os.path.dirname(os.path.abspath(__file__))
# every runtime dependency, transitive ones too, pinned with the hash of every file the registry has for it
LOCK = os.path.join(HERE, "requirements.lock")
CROSS = {"aarch64": {"cc": "aarch64-linux-gnu-gcc", "sysconfig": "_sysconfigdata__linux_aarch64-linux-gnu",
                     "platform": "linux-aarch64", "openssl": "/usr/include/aarch64-linux-gnu/openssl",
                     "packages": "gcc-aarch64-linux-gnu libpython3.11-dev:arm64 libssl-dev:arm64"}}
# what a cross build copies of the source tree (the agent's packages, native/, and what setup needs)
SOURCE_FILES = ("setup.py", "pyproject.toml", "README.md")
SOURCE_DIRS = ("edge", "native", "images", "provisioning")


def dependency_pins(source: str | None = None) -> list[str]:
    """pyproject.toml's runtime dependencies (of the source tree; by default the one Hearth runs from)."""
    import tomllib
    with open(os.path.join(source or host.need_source(), "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def download_args(machine: str, dest: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--require-hashes", "--only-binary=:all:", "--python-version",
            "3.11", "--implementation", "cp", "--platform", f"manylinux_2_36_{machine}", "--platform",
            f"manylinux_2_28_{machine}", "--platform", f"manylinux_2_17_{machine}", "--platform",
            f"manylinux2014_{machine}", "--platform", "any", "-d", dest, "-r", LOCK]


def _download(machine: str, dest: str, log):
    """The dependencies' wheels for `machine`, exactly the lock's versions, each file checked against its hash."""
    host.sh(*download_args(machine, dest), log=log)


def agent_wheel_args(source: str, wheels: str) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source]


def cross_missing(machine: str, arch: str) -> str | None:
    """What cross-compiling the agent for `machine` lacks on this machine, or None."""
    cross = CROSS.get(machine)
    if cross is None:
        return f"no cross tool chain is set up for {machine}"
    sysconfig_py = f"/usr/lib/python3.11/{cross['sysconfig']}.py"
    missing = [p for p in (sysconfig_py, cross["openssl"]) if not os.path.exists(p)]
    if shutil.which(cross["cc"]) is None or missing:
        return (f"cross-compiling the agent for {arch} needs the Debian packages {cross['packages']} "
                f"(after `dpkg --add-architecture {arch}`); `make image` installs them")
    return None


def foreign_agent_wheel(recipe: Recipe, wheels: str, source: str, log):
    """The agent's wheel for another architecture, cross-compiled here with Debian's multiarch cross tool chain:
    the target's own Python headers and build variables (libpython3.11-dev:arm64 ships them, with CC set to the
    cross compiler) and its OpenSSL. Seconds, where compiling inside the target under qemu-user took minutes;
    the customize step then imports the modules and checks them against hashlib inside the target."""
    why = cross_missing(recipe.machine, recipe.arch)
    if why:
        raise BuildError(why)
    cross = CROSS[recipe.machine]
    sysconfig_py = f"/usr/lib/python3.11/{cross['sysconfig']}.py"
    work = os.path.join(os.path.dirname(wheels), "cross")
    shutil.rmtree(work, ignore_errors=True)
    src, sysconfig_dir = os.path.join(work, "src"), os.path.join(work, "sysconfig")
    os.makedirs(src)
    os.makedirs(sysconfig_dir)
    shutil.copy(sysconfig_py, sysconfig_dir)
    for name in SOURCE_FILES:
        shutil.copy(os.path.join(source, name), src)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "build", "*.egg-info")
    for name in SOURCE_DIRS:
        shutil.copytree(os.path.join(source, name), os.path.join(src, name), ignore=ignore)
    env = {**os.environ, "REQUIRE_NATIVE": "1", "PYTHONPATH": sysconfig_dir,
           "_PYTHON_SYSCONFIGDATA_NAME": cross["sysconfig"], "_PYTHON_HOST_PLATFORM": cross["platform"]}
    try:
        host.sh(*agent_wheel_args(src, wheels), log=log, env=env, cwd=src)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not any(f.endswith(f"_{recipe.machine}.whl") for f in os.listdir(wheels)):
        raise BuildError(f"the cross build made no {recipe.machine} wheel: {os.listdir(wheels)}")


def build_wheels(recipe: Recipe, wheels: str, source: str, log):
    """The agent's wheel (native modules compiled for the target) and binary wheels of its dependencies."""
    os.makedirs(wheels, exist_ok=True)
    if recipe.machine == os.uname().machine:
        host.sh(*agent_wheel_args(source, wheels), log=log, env={**os.environ, "REQUIRE_NATIVE": "1"})
    else:
        foreign_agent_wheel(recipe, wheels, source, log)
    _download(recipe.machine, wheels, log)
