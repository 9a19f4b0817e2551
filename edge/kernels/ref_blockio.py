"""Pure-Python reference of the block-file kernel (native/_blockio.pyx): same API, results and errors."""

import base64
import hashlib
import os


def b32lower(data: bytes) -> str:
    """RFC 4648 base32 of data, lower case, unpadded."""
    if not isinstance(data, bytes):
        raise TypeError(f"b32lower() takes bytes, not {type(data).__name__}")
    return base64.b32encode(data).rstrip(b"=").lower().decode("ascii")


def read_file(path):
    """(bytes, (inode, size, mtime in ns)) of the file at path, or None if there is none (ENOENT). Other
    errors raise OSError. A file that shrinks while it is read gives what was there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size)
        while len(data) < st.st_size:   # a short read (signals, some network file systems): go on
            more = os.read(fd, st.st_size - len(data))
            if not more:
                break
            data += more
        return data, (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError as exc:   # named, as the native kernel names it
        raise OSError(exc.errno, exc.strerror, os.fsdecode(path)) from None
    finally:
        os.close(fd)


MAX_KEY = 64
MAX_FANOUT = 8
MAX_PREFIX = 8


def read_blocks(blocks_dir, keys, fanout_bytes, name_prefix, dir_fd=-1):
    """Read and check the block files of keys (binary CIDv1s with a sha2-256 multihash: their digest is their
    last 32 bytes), at the path the store's layout gives (edge/store/blockfiles.py defines it and hands it here):
    blocks_dir/<the digest's first fanout_bytes bytes, hex>/<name_prefix><base32 of the key, lower, unpadded>.
    dir_fd (blocks_dir held open) lets the native kernel open each file relative to it; here every path is
    walked whole, with the same results.

    One entry per key: (bytes, whether they hash to the key's digest), None if there is no such file, or the
    OSError reading it raised (returned, not raised: one bad file does not fail the others). ValueError if a key
    is not such a CID, or the layout is out of range."""
    if type(fanout_bytes) is not int or not 0 <= fanout_bytes <= MAX_FANOUT:
        raise ValueError(f"read_blocks: fanout_bytes must be 0 to {MAX_FANOUT}")
    if len(name_prefix.encode("ascii")) > MAX_PREFIX or "/" in name_prefix or "\0" in name_prefix:
        raise ValueError(f"read_blocks: name_prefix must be at most {MAX_PREFIX} characters, without / or NUL")
    out = []
    for key in keys:
        if type(key) is not bytes:
            raise ValueError("read_blocks: keys must be bytes")
        if not 36 <= len(key) <= MAX_KEY or key[0] != 1 or key[-34:-32] != b"\x12\x20":
            raise ValueError("read_blocks: a key is not a binary CIDv1 with a sha2-256 multihash")
        shard = key[-32:-32 + fanout_bytes].hex()
        path = os.path.join(os.fsdecode(blocks_dir), *([shard] if shard else []), name_prefix + b32lower(key))
        try:
            got = read_file(path)
        except OSError as exc:
            out.append(exc)
            continue
        if got is not None:
            got = (got[0], hashlib.sha256(got[0]).digest() == key[-32:])
        out.append(got)
    return out
