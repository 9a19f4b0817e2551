"""Chunk boundaries: FastCDC (2020) with the GIL released (native/fastcdc.c), and fixed-size cuts.

Reference: edge/kernels/ref_chunking.py (same functions, same cuts, same errors).
"""

from cpython.buffer cimport PyBuffer_Release
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint64_t


include "_buffers.pxi"

cdef extern from "fastcdc.h" nogil:
    ctypedef struct hearth_cdc_params:
        size_t min_size
        size_t avg_size
        size_t max_size
        uint64_t mask_s
        uint64_t mask_l
    uint64_t hearth_cdc_mask(unsigned bits)
    size_t hearth_fastcdc_cuts(const hearth_cdc_params *p, const uint8_t *buf, size_t len, int eof,
                               size_t *cuts)

# The size rules and mask widths live in the reference, so both chunkers validate and round alike.
from edge.kernels.ref_chunking import mask_bits as _mask_bits


def _gear_mask(unsigned bits):
    """The C mask of `bits` one-bits (0 if out of range); tests compare it with ref_chunking.gear_mask."""
    return hearth_cdc_mask(bits)


def fastcdc_cuts(buf, min_size=65536, avg_size=262144, max_size=1048576, normalization=1, eof=True):
    """End offsets of the FastCDC chunks of buf, found with the GIL released.

    With eof=False the trailing chunk that ended only because buf did is left out: a streaming caller keeps
    buf[cuts[-1]:] (all of buf if there is no cut) and puts it in front of the next piece. Raises
    TypeError for a non-contiguous or non-buffer buf, ValueError for bad sizes.
    """
    bits_s, bits_l = _mask_bits(min_size, avg_size, max_size, normalization)
    cdef hearth_cdc_params params
    params.min_size = min_size
    params.avg_size = avg_size
    params.max_size = max_size
    params.mask_s = hearth_cdc_mask(bits_s)
    params.mask_l = hearth_cdc_mask(bits_l)
    cdef int at_eof = 1 if eof else 0
    cdef Py_buffer view
    cdef size_t length, n = 0, i
    cdef size_t *cuts = NULL
    get_contiguous(buf, &view, "buf")
    try:
        length = <size_t>view.len
        # Every chunk but the last has at least min_size bytes, so this bounds the count.
        cuts = <size_t *>PyMem_Malloc((length // params.min_size + 2) * sizeof(size_t))
        if cuts == NULL:
            raise MemoryError(f"no memory for the cut points of {length} bytes")
        with nogil:
            n = hearth_fastcdc_cuts(&params, <const uint8_t *>view.buf, length, at_eof, cuts)
        return [cuts[i] for i in range(n)]
    finally:
        PyMem_Free(cuts)
        PyBuffer_Release(&view)


def fixed_cuts(length, size):
    """End offsets of fixed-size chunks of size bytes over length bytes (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if length < 0:
        raise ValueError(f"length must be non-negative, got {length}")
    cuts = list(range(size, length, size))
    if length:
        cuts.append(length)
    return cuts
