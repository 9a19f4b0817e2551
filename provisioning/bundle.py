"""The update bundle's format, shared by the host that makes bundles and the device that applies them.

A bundle is a tar with, in this order:
    manifest.json   {"format": 1, "board", "version", "root_size", "root_sha256" (of the root file system as
                     written to the slot; bundles made before 2026-12 lack it), "files": {name: {"size", "sha256"}},
                     "debug_console", and "downgrade_from" for a signed downgrade}
    manifest.sig    Ed25519 signature of manifest.json's bytes by a key listed in /etc/hearth/update-keys
    root.img.zst    the new root file system (ext4), compressed
    vmlinuz, initrd.img
    devicetrees.tar (boards whose firmware loads the device tree from the slot: the Raspberry Pi)
Versions are ordered by their leading dotted numbers (1.10 > 1.9); a suffix (-rc1, -test) does not order them.
"""

import re

from edge.provisioning.slots import UpdateError

ORDER = ["manifest.json", "manifest.sig", "root.img.zst", "vmlinuz", "initrd.img"]
OPTIONAL = ["devicetrees.tar"]      # boards whose firmware loads the device tree from the slot (Raspberry Pi)
CHUNK = 4 << 20
VERSION_RE = re.compile(r"\d+(?:\.\d+)*")


def version_key(version: str) -> tuple[int, ...]:
    """What versions are ordered by: their leading dotted numbers (2 == 2.0 < 2.0.1 < 2.10); a suffix does not
    order them."""
    m = VERSION_RE.match(str(version))
    if not m:
        raise UpdateError(f"version {version!r} does not start with a number, so it cannot be ordered against "
                          "this device's version floor; make the bundle with a numbered --version")
    parts = [int(x) for x in m.group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)
