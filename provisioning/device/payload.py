"""A bundle as the device reads it (the format is edge/provisioning/bundle.py's): the signature first, by a key
/etc/hearth/update-keys lists; then every file's size and SHA-256 against the signed manifest, by reading the
whole bundle once before anything is written (the kernel, initramfs and device trees are kept in memory, the
root is hashed again as it is written, and a bundle changed between the two reads is refused).
"""

import hashlib
import io
import json
import os
import tarfile

from edge.atomic import write_atomic
from edge.identity import verify
from edge.provisioning.bundle import CHUNK, OPTIONAL, ORDER
from edge.provisioning.slots import UpdateError

UPDATE_KEYS = "/etc/hearth/update-keys"


def trusted_keys(path: str = UPDATE_KEYS) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def read_bundle(path: str, trusted: list[str]) -> tuple[dict, tarfile.TarFile]:
    """The verified manifest and the open tar, positioned after the signature. UpdateError if unsigned,
    signed by an untrusted key, or malformed."""
    f = open(path, "rb")
    manifest, _ = read_signed(f, path, trusted)
    f.seek(0)
    tar = tarfile.open(fileobj=f, mode="r|")
    tar.next()
    tar.next()
    return manifest, tar


def read_signed(f, path: str, trusted: list[str]) -> tuple[dict, bytes]:
    """The manifest of the bundle open as f (from its start) and its bytes, the signature checked."""
    if not trusted:
        raise UpdateError(f"no update keys are configured ({UPDATE_KEYS} is empty); this device accepts no bundle")
    try:
        tar = tarfile.open(fileobj=f, mode="r|")
        first = tar.next()
        if first is None or first.name != "manifest.json" or first.size > 1 << 20:
            raise UpdateError(f"{path} is not a Hearth bundle (it must start with manifest.json)")
        body = tar.extractfile(first).read()
        second = tar.next()
        if second is None or second.name != "manifest.sig" or second.size > 1024:
            raise UpdateError(f"{path} has no signature (manifest.sig); refusing it")
        sig = tar.extractfile(second).read()
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError(f"{path} is not a readable bundle: {exc}") from None
    if not any(verify(k, body, sig) for k in trusted):
        raise UpdateError(f"{path} is not signed by a key this device trusts ({', '.join(trusted)}); refusing it")
    try:
        manifest = json.loads(body)
        files = manifest["files"]
        assert set(ORDER[2:]) <= set(files) <= set(ORDER[2:] + OPTIONAL)
        assert all(isinstance(files[n]["size"], int) and isinstance(files[n]["sha256"], str) for n in files)
        assert isinstance(manifest["board"], str) and isinstance(manifest["version"], str)
        root = manifest.get("root_sha256")
        assert root is None or (isinstance(root, str) and len(root) == 64 and set(root) <= set("0123456789abcdef"))
    except (ValueError, KeyError, AssertionError, TypeError):
        raise UpdateError(f"{path}: the signed manifest is not one this version understands") from None
    return manifest, body


def stream_member(tar, want: str, expect: dict):
    member = tar.next()
    if member is None or member.name != want:
        raise UpdateError(f"the bundle lacks {want} where it should be")
    if member.size != expect["size"]:
        raise UpdateError(f"{want} is {member.size} bytes; the signed manifest says {expect['size']}")
    return tar.extractfile(member)


def reopen(f, body: bytes):
    """The bundle's tar read again from its start, positioned after the signature; the manifest must be the
    bytes verified before (else the file changed under us)."""
    f.seek(0)
    tar = tarfile.open(fileobj=f, mode="r|")
    first = tar.next()
    if first is None or first.name != "manifest.json" or tar.extractfile(first).read() != body:
        raise UpdateError("the bundle changed while it was being read; nothing more is written (copy it to a "
                          "place no one else can write and apply it again)")
    tar.next()
    return tar


def verify_payload(f, body: bytes, manifest: dict) -> dict[str, bytes]:
    """Read the whole bundle once and check every file's size and SHA-256 against the signed manifest, writing
    nothing. Returns the bytes of the small files (kernel, initramfs, device trees) so that what is installed
    later is what was checked here; the root is hashed again as it is written."""
    kept = {}
    try:
        tar = reopen(f, body)
        for name in [n for n in ORDER[2:] + OPTIONAL if n in manifest["files"]]:
            src = stream_member(tar, name, manifest["files"][name])
            h = hashlib.sha256()
            chunks = []
            for chunk in iter(lambda: src.read(CHUNK), b""):
                h.update(chunk)
                if name != "root.img.zst":
                    chunks.append(chunk)
            if h.hexdigest() != manifest["files"][name]["sha256"]:
                raise UpdateError(f"{name} in the bundle does not match its signed hash; refusing the bundle "
                                  "(nothing was written)")
            if name != "root.img.zst":
                kept[name] = b"".join(chunks)
            if name == "devicetrees.tar":
                devicetrees(kept[name])
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError(f"the bundle is damaged ({exc}); nothing was written") from None
    return kept


def devicetrees(data: bytes) -> list[tuple[str, bytes]]:
    """The device trees in devicetrees.tar, every member checked to be one (a plain .dtb file, no path)."""
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            for member in t.getmembers():
                name = member.name
                if not member.isfile() or "/" in name or not name.endswith(".dtb") or member.size > 1 << 20:
                    raise UpdateError(f"devicetrees.tar holds {name!r}, which is not a device tree; refusing the "
                                      "bundle (nothing was written)")
                out.append((name, t.extractfile(member).read()))
    except tarfile.TarError as exc:
        raise UpdateError(f"devicetrees.tar is not a readable tar ({exc}); refusing the bundle") from None
    return out


def write_devicetrees(data: bytes, sdir: str):
    for name, dtb in devicetrees(data):
        write_atomic(os.path.join(sdir, name), dtb)
