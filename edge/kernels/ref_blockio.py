"""Pure-Python reference of the block-file kernel (native/_blockio.pyx): same API, results and errors."""

import base64
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
    finally:
        os.close(fd)
