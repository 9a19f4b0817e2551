"""The A/B rollout backend on a Hearth image: the agent (user hearth, no capabilities, a read-only system) fetches
and hands the bundle over; root installs it. Two files in DATA_DIR/update/ carry it:

    request   written by the agent: {"do": "install"} (the bundle is DATA_DIR/update/bundle) or {"do": "reboot"}
    result    written by root: {"slot", "version", "entry"} after update.apply installed it, or {"error": why}

hearth-update.path starts hearth-update.service (root, `hearth update run-request`) when a request appears;
it takes the request away first (so it runs once), then does exactly one of two things: install the bundle
with update.apply (every check of `hearth update apply`, before anything is written; the bundle is read through
a descriptor opened without following links, and apply hashes the root file system again as it writes it, so a
bundle swapped meanwhile is refused), or, only after an install it reported, the boot loader's trial reboot.
Root writes only `result`, through edge/atomic.py's link-safe writers: whatever the service user planted in its
own directory, root follows no link there. The worst a compromised agent can do with this is a reboot.
"""

import json
import os
import stat
import subprocess
import time

from edge.atomic import UnsafePathError, open_dir, read_regular, write_atomic
from edge.provisioning.device.bootloader import BOOT, loader_for
from edge.provisioning.device.update import apply
from edge.provisioning.slots import UpdateError

DIR = "update"
REQUEST, RESULT, BUNDLE = "request", "result", "bundle"
WAIT = 3600.0          # seconds the agent waits for root to install (a root file system of a few GiB on an SD card)


# root's side: `hearth update run-request` ---------------------------------------------------------------------


def run_request(data_dir: str, *, boot: str = BOOT, log=print, install=apply, run=subprocess.run) -> str:
    """Carry out the request in DATA_DIR/update/, if any; what was done ("nothing", "installed", "refused",
    "rebooting", "no install to boot")."""
    base = open_dir(data_dir)
    try:
        folder = open_dir(DIR, base)
    except FileNotFoundError:
        os.close(base)
        return "nothing"
    os.close(base)
    try:
        try:
            raw = read_regular(REQUEST, folder, limit=4096)
        except UnsafePathError as exc:
            os.unlink(REQUEST, dir_fd=folder)
            log(f"hearth: refused the update request: {exc}")
            return "refused"
        if raw is None:
            return "nothing"
        os.unlink(REQUEST, dir_fd=folder)    # once, whatever happens next
        try:
            what = json.loads(raw).get("do")
        except (ValueError, AttributeError):
            what = None
        if what == "install":
            return _install(folder, boot, log, install)
        if what == "reboot":
            return _reboot(folder, boot, log, run)
        log("hearth: the update request is neither install nor reboot; nothing done")
        return "refused"
    finally:
        os.close(folder)


def _install(folder: int, boot: str, log, install) -> str:
    try:
        os.unlink(RESULT, dir_fd=folder)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(BUNDLE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError as exc:
        result = {"error": f"no bundle to install ({exc.strerror})"}
    else:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UpdateError("the bundle handed over is not a regular file")
            done = install(f"/proc/self/fd/{fd}", boot=boot, log=log)
            result = {"slot": done["slot"], "version": done["version"], "entry": done["entry"]}
        except UpdateError as exc:
            result = {"error": str(exc)}
        finally:
            os.close(fd)
            os.unlink(BUNDLE, dir_fd=folder)
    write_atomic(RESULT, json.dumps(result).encode(), 0o644, dir_fd=folder)
    log(f"hearth: {result.get('error') or 'installed ' + result['version'] + ' in slot ' + result['slot']}")
    return "refused" if "error" in result else "installed"


def _reboot(folder: int, boot: str, log, run) -> str:
    try:
        result = json.loads(read_regular(RESULT, folder, limit=4096, owner=os.geteuid()) or b"{}")
    except (UnsafePathError, ValueError):
        result = {}
    if not isinstance(result, dict) or "slot" not in result or result.get("rebooted"):
        log("hearth: no installed update waits for its trial boot; not rebooting")
        return "no install to boot"
    write_atomic(RESULT, json.dumps(result | {"rebooted": True}).encode(), 0o644, dir_fd=folder)
    command = loader_for(boot).reboot_command()
    log(f"hearth: booting slot {result['slot']} on trial ({' '.join(command)})")
    run(command, check=False)
    return "rebooting"


# the agent's side (ABBackend, when it does not run as root) ---------------------------------------------------


def hand_over(data_dir: str, bundle: str, wait: float = WAIT, poll: float = 1.0) -> dict:
    """Move bundle to DATA_DIR/update/, ask root to install it, and wait for the result (blocking: a worker
    thread). UpdateError with root's reason when it refused, or when nothing answered within wait."""
    folder = os.path.join(data_dir, DIR)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    for stale in (RESULT, REQUEST):
        if os.path.exists(os.path.join(folder, stale)):
            os.unlink(os.path.join(folder, stale))
    os.replace(bundle, os.path.join(folder, BUNDLE))
    write_atomic(os.path.join(folder, REQUEST), json.dumps({"do": "install"}).encode(), 0o644)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(folder, RESULT)) as f:
                result = json.load(f)
        except (FileNotFoundError, ValueError):   # not there yet, or not whole yet
            time.sleep(poll)
            continue
        if not isinstance(result, dict) or not isinstance(result.get("slot", result.get("error")), str):
            raise UpdateError("the update service answered with something it does not write")
        if "error" in result:
            raise UpdateError(result["error"])
        return result
    raise UpdateError(f"hearth-update.service did not install the bundle within {wait:.0f} s (is "
                      "hearth-update.path enabled?)")


def ask_reboot(data_dir: str) -> None:
    """Ask root for the trial reboot of what it installed."""
    write_atomic(os.path.join(data_dir, DIR, REQUEST), json.dumps({"do": "reboot"}).encode(), 0o644)
