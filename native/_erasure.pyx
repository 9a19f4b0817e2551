# cython: language_level=3
"""Reed-Solomon erasure coding over GF(2^8): Encoder(k, m) and Decoder(k, m) on caller-owned buffers.

Systematic code: the k data shards are stored as they are and m parity shards are computed from the Cauchy
generator (native/gf256.c); any k of the k + m shards rebuild the others. The arithmetic runs without the GIL
on the best SIMD path this CPU has (HEARTH_RS_PATH forces one).
"""

import os
from collections import OrderedDict

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cdef extern from "gf256.h" nogil:
    uint8_t gf_mul(uint8_t a, uint8_t b)
    uint8_t gf_inv(uint8_t a)
    void gf_generator_matrix(int k, int m, uint8_t *out)
    int gf_invert_matrix(int n, uint8_t *a)
    uint64_t gf_affine_matrix(uint8_t c)

cdef extern from "rs_kernels.h" nogil:
    int RS_NPATHS
    const char *rs_path_name(int path)
    int rs_path_by_name(const char *name)
    int rs_path_compiled(int path)
    int rs_path_supported(int path)
    int rs_best_path()
    size_t rs_table_bytes(int path)
    void rs_expand_tables(int path, int rows, int k, const uint8_t *coefs, uint8_t *tables)
    void rs_dot_prod(int path, size_t len, int k, int rows, const uint8_t *tables, const uint8_t *const *inp,
                     uint8_t *const *out)

ENV_PATH = "HEARTH_RS_PATH"
MAX_SHARDS = 256
# Decode tables kept per erasure pattern; a stripe store sees few distinct patterns at a time.
DECODE_CACHE_SIZE = 64

PATHS = tuple(rs_path_name(i).decode() for i in range(RS_NPATHS))


class PathUnavailable(RuntimeError):
    """The kernel path asked for is not built for, or not supported by, this CPU."""


def compiled_paths():
    """Names of the kernel paths built into this module for this architecture."""
    return [p for i, p in enumerate(PATHS) if rs_path_compiled(i)]


def supported_paths():
    """Names of the kernel paths this CPU can run, slowest first."""
    return [p for i, p in enumerate(PATHS) if rs_path_supported(i)]


def best_path():
    """The path chosen from the CPU's features when nothing forces one."""
    return PATHS[rs_best_path()]


def selected_path(path=None):
    """The path an Encoder or Decoder uses: `path`, else $HEARTH_RS_PATH, else the best; checked."""
    source = "argument"
    if path is None:
        path = os.environ.get(ENV_PATH) or None
        source = ENV_PATH
    if path is None:
        return best_path()
    if path not in PATHS:
        raise PathUnavailable(f"{source} names an unknown erasure kernel {path!r}; choose one of {', '.join(PATHS)}")
    if not rs_path_supported(PATHS.index(path)):
        raise PathUnavailable(
            f"{source} forces the {path!r} erasure kernel, which this CPU cannot run; "
            f"it supports {', '.join(supported_paths())} (unset {ENV_PATH} to choose automatically)")
    return path


def generator_matrix(int k, int m):
    """The (k + m) x k systematic generator as rows of bytes (identity, then Cauchy rows)."""
    _check_km(k, m)
    cdef bytearray g = bytearray((k + m) * k)
    cdef uint8_t *p = g
    gf_generator_matrix(k, m, p)
    return [bytes(g[i * k:(i + 1) * k]) for i in range(k + m)]


def affine_matrix(int c):
    """The GF2P8AFFINEQB bit matrix for multiplication by c (exposed so tests can check it on any CPU)."""
    if not 0 <= c <= 255:
        raise ValueError("c must be a byte value 0..255")
    return gf_affine_matrix(<uint8_t>c)


def gf_multiply(int a, int b):
    """a * b in GF(2^8) with the polynomial 0x11d."""
    if not (0 <= a <= 255 and 0 <= b <= 255):
        raise ValueError("GF(2^8) elements are byte values 0..255")
    return gf_mul(<uint8_t>a, <uint8_t>b)


cdef _check_km(int k, int m):
    if k < 1:
        raise ValueError(f"k (data shards) must be at least 1, got {k}")
    if m < 1:
        raise ValueError(f"m (parity shards) must be at least 1, got {m}")
    if k + m > MAX_SHARDS:
        raise ValueError(f"k + m must be at most {MAX_SHARDS} over GF(2^8), got {k} + {m} = {k + m}")


def _is_readonly(obj):
    try:
        return memoryview(obj).readonly
    except (TypeError, BufferError):
        return False


cdef class _Buffers:
    """Holds Py_buffer views of up to n objects for the length of one call."""
    cdef Py_buffer *views
    cdef int n, held
    cdef const uint8_t **ptrs

    def __cinit__(self, int n):
        self.n = n
        self.held = 0
        self.views = <Py_buffer *>malloc(n * sizeof(Py_buffer))
        self.ptrs = <const uint8_t **>malloc(n * sizeof(uint8_t *))
        if self.views == NULL or self.ptrs == NULL:
            raise MemoryError()

    def __dealloc__(self):
        self.release()
        free(self.views)
        free(self.ptrs)

    cdef Py_ssize_t acquire(self, seq, int count, bint writable, str what) except -1:
        """Take views of seq[0..count); all must share one length, which is returned."""
        cdef Py_ssize_t length = -1
        cdef int flags = PyBUF_WRITABLE if writable else PyBUF_SIMPLE
        cdef int i
        for i in range(count):
            obj = seq[i]
            try:
                PyObject_GetBuffer(obj, &self.views[i], flags)
            except BufferError:
                self.release()
                if writable and _is_readonly(obj):
                    raise ValueError(f"{what} {i} is read-only; pass a bytearray or a writable memoryview") from None
                raise ValueError(f"{what} {i} is not a C-contiguous buffer") from None
            except TypeError:
                self.release()
                raise TypeError(f"{what} {i} is a {type(obj).__name__}, not a bytes-like buffer") from None
            self.held = i + 1
            self.ptrs[i] = <const uint8_t *>self.views[i].buf
            if length < 0:
                length = self.views[i].len
            elif self.views[i].len != length:
                ln = self.views[i].len
                self.release()
                raise ValueError(f"shards must all have the same length: {what} {i} has {ln} bytes, "
                                 f"expected {length}")
        return length

    cdef void release(self):
        cdef int i
        for i in range(self.held):
            PyBuffer_Release(&self.views[i])
        self.held = 0


cdef class _Coder:
    cdef readonly int k, m
    cdef int _path

    def __cinit__(self, int k, int m, path=None):
        _check_km(k, m)
        self.k = k
        self.m = m
        self._path = PATHS.index(selected_path(path))

    @property
    def path(self):
        """The kernel path this coder runs."""
        return PATHS[self._path]

    cdef bytes _tables(self, const uint8_t *coefs, int rows):
        cdef bytes t = bytes(rows * self.k * rs_table_bytes(self._path))
        rs_expand_tables(self._path, rows, self.k, coefs, <uint8_t *><char *>t)
        return t

    cdef _run(self, bytes tables, int rows, inputs, outputs, str in_what, str out_what):
        cdef _Buffers ins = _Buffers(self.k)
        cdef _Buffers outs = _Buffers(rows)
        cdef Py_ssize_t n_in = ins.acquire(inputs, self.k, False, in_what)
        cdef Py_ssize_t n_out
        cdef const uint8_t *tbl = tables
        try:
            n_out = outs.acquire(outputs, rows, True, out_what)
            if n_out != n_in:
                raise ValueError(f"{out_what}s have {n_out} bytes each but {in_what}s have {n_in}; "
                                 "every shard must have the same length")
            with nogil:
                rs_dot_prod(self._path, <size_t>n_in, self.k, rows, tbl,
                            ins.ptrs, <uint8_t *const *>outs.ptrs)
        finally:
            outs.release()
            ins.release()


cdef class Encoder(_Coder):
    """Encoder(k, m, path=None).encode(data, parity): fill m parity shards from k data shards."""
    cdef bytes _parity_tables

    def __init__(self, int k, int m, path=None):
        cdef bytearray g = bytearray((k + m) * k)
        gf_generator_matrix(k, m, <uint8_t *><char *>g)
        self._parity_tables = self._tables(<const uint8_t *>g + k * k, m)

    def encode(self, data, parity):
        """Compute parity[0..m) from data[0..k); all equal-length buffers, parity writable and caller-owned."""
        if len(data) != self.k:
            raise ValueError(f"encode needs exactly k={self.k} data shards, got {len(data)}")
        if len(parity) != self.m:
            raise ValueError(f"encode needs exactly m={self.m} parity buffers, got {len(parity)}")
        self._run(self._parity_tables, self.m, data, parity, "data shard", "parity buffer")

    def __repr__(self):
        return f"Encoder(k={self.k}, m={self.m}, path={self.path!r})"


cdef class Decoder(_Coder):
    """Decoder(k, m, path=None).decode(shards, ids, out, out_ids): rebuild any shards from any k others."""
    cdef bytes _generator
    cdef object _cache

    def __init__(self, int k, int m, path=None):
        cdef bytearray g = bytearray((k + m) * k)
        gf_generator_matrix(k, m, <uint8_t *><char *>g)
        self._generator = bytes(g)
        self._cache = OrderedDict()

    def decode(self, shards, ids, out, out_ids):
        """Rebuild shards out_ids into the writable buffers out from the first k of shards (numbered by ids).

        Shard numbers run 0..k+m-1: data first, then parity. Raises ValueError when fewer than k shards are
        given, numbers repeat or fall outside the code, or lengths differ.
        """
        if len(shards) != len(ids):
            raise ValueError(f"got {len(shards)} shards but {len(ids)} shard numbers")
        if len(shards) < self.k:
            raise ValueError(f"decode needs at least k={self.k} shards, got {len(shards)}: "
                             f"more than m={self.m} shards are lost and the data cannot be rebuilt")
        if len(out) != len(out_ids):
            raise ValueError(f"got {len(out)} output buffers but {len(out_ids)} shard numbers to rebuild")
        present = tuple(ids[:self.k])
        wanted = tuple(out_ids)
        if not wanted:
            return
        # A pattern in the cache was validated when it was added: the common case costs one dict lookup.
        key = (present, wanted)
        tables = self._cache.get(key)
        if tables is None:
            tables = self._decode_tables(key)
        else:
            self._cache.move_to_end(key)
        self._run(tables, len(wanted), shards, out, "shard", "output buffer")

    cdef bytes _decode_tables(self, tuple key):
        cdef int n = self.k + self.m
        present = tuple([int(x) for x in key[0]])
        wanted = tuple([int(x) for x in key[1]])
        for name, nums in (("shard", present), ("output shard", wanted)):
            for x in nums:
                if not 0 <= x < n:
                    raise ValueError(f"{name} number {x} is outside 0..{n - 1} for k={self.k}, m={self.m}")
            if len(set(nums)) != len(nums):
                raise ValueError(f"{name} numbers repeat: {list(nums)}")
        cdef int k = self.k
        cdef int rows = len(wanted)
        cdef const uint8_t *g = self._generator
        cdef bytearray sub = bytearray(k * k)
        cdef uint8_t *s = sub
        cdef int i, j, t, w
        cdef uint8_t acc
        for i in range(k):
            for j in range(k):
                s[i * k + j] = g[present[i] * k + j]
        if gf_invert_matrix(k, s) != 0:  # impossible for a Cauchy code; kept as a guard against corruption
            raise ValueError(f"shards {list(present)} do not determine the data")
        # Row for shard w: its generator row times the inverse (data rows are rows of the inverse itself).
        cdef bytearray coefs = bytearray(rows * k)
        cdef uint8_t *c = coefs
        for t in range(rows):
            w = wanted[t]
            for j in range(k):
                acc = 0
                for i in range(k):
                    acc ^= gf_mul(g[w * k + i], s[i * k + j])
                c[t * k + j] = acc
        tables = self._tables(c, rows)
        self._cache[key] = tables
        if len(self._cache) > DECODE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return tables

    def __repr__(self):
        return f"Decoder(k={self.k}, m={self.m}, path={self.path!r})"
