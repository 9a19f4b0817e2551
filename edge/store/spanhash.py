"""The importer's hashing: SHA2-256 of a buffer's spans, or of a file's spans read and hashed while they are in
the CPU cache, on two threads (the native kernel releases the GIL), HASH_LANES spans a call."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from edge.kernels import HASH_LANES, sha256_spans
from edge.store.errors import ImportFailed


class SpanHasher:
    """SHA2-256 of the spans of a buffer, split across two threads (the kernel releases the GIL)."""

    def __init__(self, threads: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def spans(self, view, cuts) -> bytes:
        n = len(cuts)
        if self.pool is None or n < 4:
            return sha256_spans(view, cuts)
        mid = n // 2
        base = cuts[mid - 1]
        future = self.pool.submit(sha256_spans, view[base:cuts[-1]], [c - base for c in cuts[mid:]])
        first = sha256_spans(view[:base], cuts[:mid])
        return first + future.result()

    def read_and_hash(self, fd: int, offset: int, buf, cuts):
        """Start reading buf's spans from fd at offset, hashing each right after reading it (while it is in the
        CPU cache), the two halves on two threads. Returns a function that waits and gives the digests;
        it raises ImportFailed if the file ends early. buf None: the bytes are not kept (only-hash), each span
        is read into the thread's own scratch buffer."""
        n = len(cuts)
        if self.pool is None or n < 2:
            done = read_hash_spans(fd, offset, buf, cuts, 0, n)
            return lambda: done
        mid = n // 2
        halves = [self.pool.submit(read_hash_spans, fd, offset, buf, cuts, 0, mid),
                  self.pool.submit(read_hash_spans, fd, offset, buf, cuts, mid, n)]
        return lambda: b"".join(f.result() for f in halves)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


_scratch = threading.local()


def scratch_view(n: int) -> memoryview:
    """This thread's reusable buffer of at least n bytes (only-hash: one chunk, reread while in the cache)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < n:
        buf = _scratch.buf = memoryview(bytearray(n))
    return buf[:n]


def read_hash_spans(fd, offset, buf, cuts, lo, hi) -> bytes:
    """The digests of spans lo to hi, read HASH_LANES spans at a time and hashed right after (two, in one native
    call, where the kernel hashes two at once: 512 KiB is still in the CPU's cache)."""
    digests = []
    start = cuts[lo - 1] if lo else 0
    for i in range(lo, hi, HASH_LANES):
        ends = cuts[i:min(i + HASH_LANES, hi)]
        end = ends[-1]
        piece = buf[start:end] if buf is not None else scratch_view(end - start)
        got = 0
        while got < len(piece):
            n = os.preadv(fd, [piece[got:]], offset + start + got)
            if n == 0:
                raise ImportFailed("the file got shorter while it was being added; add it again once it is "
                                   "no longer being written")
            got += n
        digests.append(sha256_spans(piece, [e - start for e in ends]))   # native, GIL released
        start = end
    return b"".join(digests)
