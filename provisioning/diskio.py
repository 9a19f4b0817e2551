"""Writing an image to a partition or a card, and reading it back from the medium, not from memory.

Both go around the page cache (O_DIRECT) where the target allows it:
- the write does not fill the cache with a gigabyte nobody reads again: on a box with 1 GiB of memory that would
  push the agent's working set out while an update installs;
- the read-back comes from the device. Read through the cache, it would return the pages the write just left
  there, and a card that dropped the writes would still "read back as written".
Where O_DIRECT is refused (ramfs, an older kernel's tmpfs, some FUSE file systems: where a file standing in for
a partition may be) the same calls go through the cache, and the read-back drops the file's cached pages first
(they are clean after the fsync, so the kernel lets them go) so that it still reads the medium where it can.

O_DIRECT wants the buffer's address, the file offset and the length in whole logical blocks: the buffer is an
anonymous mapping (page-aligned), reads and writes are whole multiples of ALIGN from offset 0, and an image whose
size is not a multiple ends with one write through the cache.
"""

import errno
import fcntl
import hashlib
import mmap
import os

from edge.atomic import read_full

ALIGN = 4096            # the largest logical block size of the media written here (4Kn disks); 512 divides it
CHUNK = 4 << 20         # a multiple of ALIGN


def _whole_blocks(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for fd; False when the file system refuses it (the fd is left as it was)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | os.O_DIRECT) if on else (flags & ~os.O_DIRECT))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return on


def _write_all(fd: int, view: memoryview):
    while view:
        view = view[os.write(fd, view):]


def write_stream(src, fd: int, hasher=None, progress=None) -> int:
    """Copy binary file object src (to its end) to fd from its current offset, which must be 0 or a multiple
    of ALIGN; update hasher with every byte; fsync. Returns the bytes written."""
    buf = mmap.mmap(-1, CHUNK)
    view = memoryview(buf)
    direct = set_direct(fd, True)
    written = 0
    try:
        while True:
            n = read_full(src, view)
            if not n:
                break
            if hasher is not None:
                hasher.update(view[:n])
            whole = n - n % ALIGN if direct else n
            _write_all(fd, view[:whole])
            if whole < n:                   # the image's last, partial block: through the cache
                direct = set_direct(fd, False)
                _write_all(fd, view[whole:n])
            written += n
            if progress:
                progress(n)
            if n < CHUNK:
                break
    finally:
        if direct:
            set_direct(fd, False)
        view.release()
        buf.close()
    os.fsync(fd)
    return written


def sha256_of_medium(fd: int, size: int, offset: int = 0) -> tuple[str, int]:
    """SHA-256 of size bytes of fd from offset (a multiple of ALIGN), read from the medium: O_DIRECT where it
    is allowed, else after dropping the file's cached pages. Returns (hex digest, bytes read), the count short
    when the file ends first."""
    direct = set_direct(fd, True)
    if not direct:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    buf = mmap.mmap(-1, CHUNK)
    view = memoryview(buf)
    h = hashlib.sha256()
    done = 0
    try:
        while done < size:
            want = min(CHUNK, size - done)
            n = os.preadv(fd, [view[:_whole_blocks(want)]], offset + done)
            if n <= 0:
                break
            take = min(n, want)
            h.update(view[:take])
            done += take
    finally:
        if direct:
            set_direct(fd, False)
        view.release()
        buf.close()
    return h.hexdigest(), done
