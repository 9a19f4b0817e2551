"""SHA2-256 of many blocks per call with the GIL released (native/sha256_batch.c, on OpenSSL).

Reference: edge/kernels/ref_hashing.py (same functions, same results, same errors).
"""

from cpython.buffer cimport PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uintptr_t
from libc.string cimport memcpy, memset

include "_buffers.pxi"

cdef extern from "sha256_batch.h" nogil:
    void hearth_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out)
    void hearth_sha256_spans(const uint8_t *buf, const size_t *ends, size_t n, uint8_t *out)
    const char *hearth_openssl_version()
    int hearth_cpu_has_sha256()
    int hearth_sha256_x2_in_use()

DIGEST_SIZE = 32


def backend():
    """What hashes, for `hearth doctor`: the OpenSSL build and whether the CPU has SHA2 instructions."""
    version = hearth_openssl_version().decode("ascii", "replace")
    hardware = "with" if hearth_cpu_has_sha256() else "without"
    lanes = ", two blocks at a time (SHA-NI)" if hearth_sha256_x2_in_use() else ""
    return f"batch SHA2-256 on {version}, CPU {hardware} SHA2 instructions{lanes}; GIL released"


def lanes():
    """Buffers a batch hashes at the same time: 2 where the two-lane SHA-NI kernel runs (a batch of two large
    blocks then costs about what one costs alone), else 1. A caller that can wait for a second block gains by
    handing them over in pairs."""
    return 2 if hearth_sha256_x2_in_use() else 1


def sha256_many(blocks):
    """One 32-byte SHA2-256 digest per block, hashed in one GIL-free pass.

    blocks: bytes-like objects (bytes, bytearray, C-contiguous memoryview). A block that is not one raises
    TypeError naming its index. Every buffer is held (bytearrays cannot be resized) until the call returns.
    """
    cdef tuple seq = tuple(blocks)
    cdef Py_ssize_t n = len(seq), acquired = 0, i
    cdef size_t count = <size_t>n
    cdef object block
    # One allocation for the four arrays; +1 so that n == 0 still gets a valid pointer.
    cdef size_t per_block = sizeof(Py_buffer) + sizeof(uint8_t *) + sizeof(size_t) + 32
    cdef char *scratch = <char *>PyMem_Malloc((count + 1) * per_block)
    if scratch == NULL:
        raise MemoryError(f"no memory to track {n} blocks")
    cdef Py_buffer *views = <Py_buffer *>scratch
    cdef const uint8_t **ptrs = <const uint8_t **>(views + count + 1)
    cdef size_t *lens = <size_t *>(ptrs + count + 1)
    cdef uint8_t *out = <uint8_t *>(lens + count + 1)
    cdef list digests
    # The work done here with the GIL held is what keeps two threads from scaling on small blocks, so it
    # is kept to the minimum: bytes need no buffer export (immutable, and seq keeps them alive).
    try:
        for i in range(n):
            block = seq[i]
            if PyBytes_CheckExact(block):
                memset(&views[i], 0, sizeof(Py_buffer))  # obj NULL: PyBuffer_Release does nothing
                ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(block)
                lens[i] = <size_t>PyBytes_GET_SIZE(block)
            else:
                get_contiguous(block, &views[i], "blocks", i)
                ptrs[i] = <const uint8_t *>views[i].buf
                lens[i] = <size_t>views[i].len
            acquired += 1
        with nogil:
            hearth_sha256_many(ptrs, lens, count, out)
        digests = [None] * n
        for i in range(n):
            digests[i] = PyBytes_FromStringAndSize(<char *>out + 32 * i, 32)
    finally:
        for i in range(acquired):
            PyBuffer_Release(&views[i])
        PyMem_Free(scratch)
    return digests


def sha256_spans(buf, offsets, out=None):
    """SHA2-256 of consecutive spans of buf: span i is buf[offsets[i-1]:offsets[i]], span 0 starts at 0.

    Returns the digests concatenated (32 bytes each), or writes them into out and returns None.
    Raises TypeError if buf or out is not a C-contiguous bytes-like object, ValueError if offsets are not
    strictly increasing and positive, run past the end of buf, or out is read-only or the wrong size.
    out may share memory with buf: every span is hashed before out is written.
    """
    cdef tuple offs = tuple(offsets)
    cdef Py_ssize_t n = len(offs), i, off, prev = 0
    cdef Py_buffer src, dst
    cdef bint have_dst = False
    cdef bytes digests = None
    cdef uint8_t *dest
    cdef size_t *ends = NULL
    get_contiguous(buf, &src, "buf")
    try:
        ends = <size_t *>PyMem_Malloc((<size_t>n + 1) * sizeof(size_t))
        if ends == NULL:
            raise MemoryError(f"no memory for {n} offsets")
        for i in range(n):
            off = offs[i]
            if off <= prev:
                after = f"offsets[{i - 1}] = {prev}" if i else "the start of buf (0)"
                raise ValueError(f"offsets must be strictly increasing and positive: offsets[{i}] = {off} "
                                 f"does not come after {after}")
            ends[i] = <size_t>off
            prev = off
        if prev > src.len:
            raise ValueError(f"offsets[{n - 1}] = {prev} is past the end of buf ({src.len} bytes)")
        if out is None:
            digests = PyBytes_FromStringAndSize(NULL, 32 * n)
            dest = <uint8_t *>PyBytes_AS_STRING(digests)
        else:
            get_contiguous(out, &dst, "out")
            have_dst = True
            if dst.readonly:
                raise ValueError("out is read-only; pass a bytearray or a writable memoryview")
            if dst.len != 32 * n:
                raise ValueError(f"out must be exactly 32 * len(offsets) = {32 * n} bytes, got {dst.len}")
            dest = <uint8_t *>dst.buf
            # Digests written into out must not change spans still to be hashed: if out shares memory
            # with buf (rare), hash into a scratch copy first, as the reference does.
            if n and (<uintptr_t>dst.buf < <uintptr_t>src.buf + <uintptr_t>src.len
                      and <uintptr_t>src.buf < <uintptr_t>dst.buf + <uintptr_t>dst.len):
                digests = PyBytes_FromStringAndSize(NULL, 32 * n)
                dest = <uint8_t *>PyBytes_AS_STRING(digests)
        with nogil:
            hearth_sha256_spans(<const uint8_t *>src.buf, ends, <size_t>n, dest)
        if have_dst and digests is not None:
            memcpy(dst.buf, dest, 32 * n)
            digests = None
    finally:
        if have_dst:
            PyBuffer_Release(&dst)
        PyBuffer_Release(&src)
        PyMem_Free(ends)
    return digests


# ---- Runs of one buffer behind a prefix (native/sha256_runs.c): the Merkle tree of edge/protect/merkle.py hashes
# a piece's leaves, then each level of nodes, in one call each, with no per-hash Python object.

cdef extern from "sha256_runs.h" nogil:
    void hearth_sha256_runs(const uint8_t *buf, size_t len, size_t width, const uint8_t *prefix, size_t plen,
                            uint8_t *out)

MAX_PREFIX = 64


def sha256_runs(buf, width, prefix=b""):
    """SHA2-256 of prefix ‖ run for each consecutive run of `width` bytes of buf (the last one may be shorter),
    the digests concatenated (32 bytes each); an empty buf gives b"".

    Raises TypeError if buf or prefix is not a C-contiguous bytes-like object, ValueError if width is not
    positive or prefix is over MAX_PREFIX bytes.
    """
    cdef Py_ssize_t w = width
    if w <= 0:
        raise ValueError(f"width must be positive, not {w}")
    cdef Py_buffer src, pre
    cdef bytes digests
    cdef size_t count
    cdef uint8_t *dest
    get_contiguous(prefix, &pre, "prefix")
    try:
        if pre.len > MAX_PREFIX:
            raise ValueError(f"prefix is {pre.len} bytes, over the {MAX_PREFIX} allowed")
        get_contiguous(buf, &src, "buf")
        try:
            count = (<size_t>src.len + <size_t>w - 1) // <size_t>w
            digests = PyBytes_FromStringAndSize(NULL, 32 * count)
            dest = <uint8_t *>PyBytes_AS_STRING(digests)
            with nogil:
                hearth_sha256_runs(<const uint8_t *>src.buf, <size_t>src.len, <size_t>w,
                                   <const uint8_t *>pre.buf, <size_t>pre.len,
                                   dest)
        finally:
            PyBuffer_Release(&src)
    finally:
        PyBuffer_Release(&pre)
    return digests
