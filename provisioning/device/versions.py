"""Rollback protection: hearth-versions.json on the boot partition (root-only, like the loader entries) keeps the
version floor, the version last committed, and the version installed in each slot. commit() raises (or, after a
signed downgrade, sets) the floor to the running slot's version. A bundle older than the floor is refused unless
its signed manifest says `"downgrade_from": V` with V at least the floor (`hearth update bundle --downgrade-from
V`): a downgrade signed for devices at V cannot be replayed against a device that has since moved past V.
Where the file is missing (a freshly flashed image) the floor is the running image's own version.
"""

import json
import os

from edge.atomic import write_atomic
from edge.provisioning.bundle import version_key
from edge.provisioning.device.bootloader import BOOT, current_slot
from edge.provisioning.slots import UpdateError

IMAGE_INFO = "/etc/hearth/image.json"     # written by the image build: {"board", "version", "debug_console"}
VERSIONS = "hearth-versions.json"         # on the boot partition: {"floor", "slots": {slot: version}}


def running_image(path: str = IMAGE_INFO) -> dict:
    """What the running image's build recorded about it: {"board", "version", "debug_console"}."""
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise UpdateError(f"this system does not record its board and version ({path} is missing: an image built "
                          "before Hearth recorded them); flash a current image to receive updates") from None
    except (OSError, ValueError) as exc:
        raise UpdateError(f"{path} is unreadable ({exc}); flash a current image to receive updates") from None
    if not isinstance(info, dict) or not isinstance(info.get("board"), str):
        raise UpdateError(f"{path} names no board; flash a current image to receive updates")
    return info


def read_versions(boot: str = BOOT) -> dict:
    """The boot partition's record {"floor", "committed", "slots": {slot: version}}; {} when there is none."""
    path = os.path.join(boot, VERSIONS)
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UpdateError(f"{path} is damaged ({exc}); remove it to make the running image's version the floor "
                          "again") from None
    if not isinstance(state, dict) or not isinstance(state.get("slots", {}), dict):
        raise UpdateError(f"{path} is not one Hearth wrote; remove it to make the running image's version the "
                          "floor again")
    return state


def write_versions(boot: str, state: dict):
    write_atomic(os.path.join(boot, VERSIONS), (json.dumps(state, sort_keys=True, indent=1) + "\n").encode())


def version_floor(boot: str, image: dict) -> str | None:
    """The oldest version this device installs without a signed downgrade."""
    return read_versions(boot).get("floor") or image.get("version")


def check_bundle(manifest: dict, image: dict, boot: str, *, allow_debug: bool = False, image_info: str = IMAGE_INFO):
    """Refuse, before anything is written, a bundle for another board, one older than the floor (unless its
    signed manifest allows that downgrade), and a debug image on a device that is not one."""
    if manifest["board"] != image["board"]:
        raise UpdateError(f"this bundle is for board {manifest['board']}; this device is {image['board']} (as "
                          f"{image_info} records); use a bundle made from a {image['board']} image")
    floor = version_floor(boot, image)
    if floor is not None and version_key(manifest["version"]) < version_key(floor):
        allowed = manifest.get("downgrade_from")
        if not isinstance(allowed, str) or version_key(allowed) < version_key(floor):
            signed = f"it allows a downgrade only from {allowed} or older" if isinstance(allowed, str) else \
                "it allows no downgrade"
            raise UpdateError(
                f"refusing {manifest['version']}: it is older than this device's version floor {floor} (the last "
                f"committed version, kept in {os.path.join(boot, VERSIONS)}) and {signed}; to go back on purpose, "
                f"make the bundle with `hearth update bundle --downgrade-from {floor}` (signed like any bundle)")
    if manifest.get("debug_console") and not image.get("debug_console") and not allow_debug:
        raise UpdateError("this bundle's image has a root shell on its serial console (built with --debug-console) "
                          "and this device is not a debug image; pass --allow-debug if that is what you want")


def raise_floor(boot: str = BOOT, cmdline: str | None = None, log=print, image_info: str = IMAGE_INFO) -> str | None:
    """After a healthy boot: the running slot's version (recorded when it was installed, else the running
    image's own) becomes the version floor. Lower than before only after a signed downgrade was installed."""
    slot = current_slot(cmdline)
    try:
        state = read_versions(boot)
        version = state.get("slots", {}).get(slot)
        if version is None:
            try:
                version = running_image(image_info).get("version")
            except UpdateError:
                version = None
        if version is None or (state.get("floor") == version and state.get("committed") == slot):
            return None
        version_key(version)
        state.setdefault("slots", {})[slot] = version
        state.update(floor=version, committed=slot)
        write_versions(boot, state)
    except (UpdateError, OSError) as exc:   # the boot was healthy all the same: no reboot over the floor
        log(f"hearth: could not record the version floor ({exc})")
        return None
    log(f"hearth: version floor {version} (slot {slot}); older bundles need a signed downgrade")
    return version
