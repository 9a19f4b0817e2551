"""The build machine: the commands a build runs, the tools it needs, qemu-user for another architecture, and the
Hearth source tree the agent's wheel is built from (a checkout, or the directory pip installed Hearth from)."""

import json
import os
import shlex
import shutil
import subprocess
from urllib.parse import unquote, urlparse

HOST_TOOLS = ["unshare", "mmdebstrap", "mkfs.vfat", "mcopy", "mmd", "mkfs.ext4", "sfdisk", "zstd"]
TOOL_PACKAGES = "Debian packages util-linux, mmdebstrap, dosfstools, mtools, e2fsprogs, fdisk, zstd"


class BuildError(Exception):
    pass


def sh(*args, log=None, **kw):
    if log:
        log("$ " + " ".join(shlex.quote(str(a)) for a in args))
    try:
        return subprocess.run([str(a) for a in args], check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError:
        raise BuildError(f"{args[0]} is not installed; `make image` installs what the build needs") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{args[0]} failed ({exc.returncode}):\n{(exc.stderr or exc.stdout or '')[-3000:]}") from None


def binfmt_conf(machine: str) -> str:
    return f"/usr/lib/binfmt.d/qemu-{machine}.conf"


def ensure_binfmt(machine: str, log):
    """Register qemu-user for `machine` with binfmt_misc (what systemd-binfmt does at boot; containers and CI
    runners often have binfmt_misc unmounted). The F flag keeps the interpreter open, so chroots need no copy."""
    entry = f"/proc/sys/fs/binfmt_misc/qemu-{machine}"
    if os.path.exists(entry):
        return
    conf = binfmt_conf(machine)
    if not os.path.exists(conf):
        raise BuildError(f"building for {machine} on {os.uname().machine} needs qemu-user-static "
                         f"(no {conf}); `make image` installs it")
    if not os.path.exists("/proc/sys/fs/binfmt_misc/register"):
        sh("mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc", log=log)
    with open(conf) as f:
        rule = next(line.strip() for line in f if line.strip() and not line.startswith("#"))
    log(f"registering {conf} with binfmt_misc")
    with open("/proc/sys/fs/binfmt_misc/register", "w") as f:
        f.write(rule)
    if not os.path.exists(entry):
        raise BuildError(f"could not register qemu-{machine} with binfmt_misc")


def missing_tools() -> list[str]:
    return [t for t in HOST_TOOLS if shutil.which(t) is None]


def check_host(machine: str, log=print):
    missing = missing_tools()
    if missing:
        raise BuildError(f"missing build tools: {', '.join(missing)} ({TOOL_PACKAGES})")
    if os.geteuid() != 0:
        raise BuildError("building an image needs root (mmdebstrap's root mode keeps file ownership exact)")
    if machine != os.uname().machine:
        ensure_binfmt(machine, log)


def _is_source(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, p)) for p in ("pyproject.toml", "setup.py", "native", "edge"))


def source_tree(given: str | None = None) -> str | None:
    """The Hearth source tree the agent's wheel is built from (its native modules are compiled for the target):
    `given` (--source), else the checkout this package runs from, else the directory `pip install` installed it
    from (pip records it in the distribution's direct_url.json), else None."""
    if given:
        if not _is_source(given):
            raise BuildError(f"{given} is not a Hearth source tree (no pyproject.toml, setup.py, native/ and edge/)")
        return os.path.abspath(given)
    import edge
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(edge.__file__)))
    if _is_source(checkout):
        return checkout
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        url = json.loads(distribution("hearth-edge").read_text("direct_url.json") or "{}").get("url", "")
    except (PackageNotFoundError, ValueError):
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file" and _is_source(unquote(parsed.path)):
        return unquote(parsed.path)
    return None


def need_source(given: str | None = None) -> str:
    source = source_tree(given)
    if source is None:
        raise BuildError("no Hearth source tree to build the agent's wheel from (its native modules are compiled "
                         "for the board): run from a checkout, or pass --source DIR (a checkout or an unpacked sdist)")
    return source
