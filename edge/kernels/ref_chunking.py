"""Pure-Python reference of the chunking kernels (native/_chunking.pyx): same API, same cuts, much slower.

The scan is FastCDC as revised in 2020 (Xia et al.): a gear rolling hash, no hashing of the first
min_size bytes of a chunk, a strict mask below avg_size and a loose one above it (normalized chunking),
and a forced cut at max_size. A chunk cut on content is longer than min_size (it ends with the byte whose
hash matched); one cut by max_size is exactly max_size long. The native scan rolls two bytes per step with
pre-shifted tables and masks; that is exactly this byte-at-a-time loop because no mask uses bit 63 (see
gear_mask).
"""

import hashlib
import operator

from edge.kernels.ref_hashing import _contiguous

GEAR_SEED = b"hearth-fastcdc-gear"
GEAR = tuple(int.from_bytes(hashlib.sha256(GEAR_SEED + bytes([i])).digest()[:8], "big") for i in range(256))

_U64 = 0xFFFFFFFFFFFFFFFF
# The span of bit positions masks may use. Bit k of a gear hash depends on the last k+1 bytes only, so
# masks use high bits (long windows); bit 63 stays clear so that a mask shifted left by one loses nothing.
MASK_TOP_BIT = 62
MASK_SPAN = 48

MIN_SIZE_FLOOR = 64
AVG_SIZE_FLOOR = 256
MAX_SIZE_CEILING = 1 << 30
MAX_NORMALIZATION = 3


def gear_mask(bits):
    """A 64-bit mask of `bits` one-bits, spread evenly from bit 62 down over the top 48 bits."""
    if not 1 <= bits <= MASK_SPAN:
        raise ValueError(f"a gear mask has 1..{MASK_SPAN} bits, got {bits}")
    mask = 0
    for k in range(bits):
        mask |= 1 << (MASK_TOP_BIT - (k * MASK_SPAN) // bits)
    return mask


def mask_bits(min_size, avg_size, max_size, normalization):
    """Validate the chunker's sizes; return the one-bit counts of MaskS and MaskL. Raises ValueError saying
    what to change (shared by the native chunker, so both give the same errors)."""
    # Integers only (TypeError otherwise): a float size would be silently truncated.
    min_size, avg_size, max_size = operator.index(min_size), operator.index(avg_size), operator.index(max_size)
    normalization = operator.index(normalization)
    if not (MIN_SIZE_FLOOR <= min_size <= avg_size <= max_size <= MAX_SIZE_CEILING):
        raise ValueError(
            f"chunk sizes must satisfy {MIN_SIZE_FLOOR} <= min_size <= avg_size <= max_size <= "
            f"{MAX_SIZE_CEILING} (1 GiB); got min_size={min_size}, avg_size={avg_size}, max_size={max_size}"
        )
    if avg_size < AVG_SIZE_FLOOR:
        raise ValueError(f"avg_size must be at least {AVG_SIZE_FLOOR}, got {avg_size}")
    if not 0 <= normalization <= MAX_NORMALIZATION:
        raise ValueError(f"normalization must be 0..{MAX_NORMALIZATION} (1 is usual), got {normalization}")
    # avg_size need not be a power of two: the masks use the nearest one on a log scale, found in integers
    # (round up when avg_size >= 2**bits * sqrt(2)).
    bits = avg_size.bit_length() - 1
    if avg_size * avg_size >= 1 << (2 * bits + 1):
        bits += 1
    return bits + normalization, bits - normalization


def check_fastcdc_args(min_size, avg_size, max_size, normalization):
    """Validate the chunker's sizes; return (mask_s, mask_l). Raises ValueError saying what to change."""
    bits_s, bits_l = mask_bits(min_size, avg_size, max_size, normalization)
    return gear_mask(bits_s), gear_mask(bits_l)


def _find_cut(buf, start, end, min_size, avg_size, max_size, mask_s, mask_l):
    """Length of the chunk at buf[start:end], or 0 when only the end of the data ended it."""
    remaining = end - start
    if remaining <= min_size:  # nothing to hash; final only when min_size == max_size
        return remaining if remaining >= max_size else 0
    limit = min(remaining, max_size)
    center = min(avg_size, limit)
    gear = GEAR
    h = 0
    i = min_size
    while i < center:
        h = ((h << 1) + gear[buf[start + i]]) & _U64
        i += 1
        if not h & mask_s:
            return i
    while i < limit:
        h = ((h << 1) + gear[buf[start + i]]) & _U64
        i += 1
        if not h & mask_l:
            return i
    return limit if remaining >= max_size else 0


def fastcdc_cuts(buf, min_size=65536, avg_size=262144, max_size=1048576, normalization=1, eof=True):
    """End offsets of the FastCDC chunks of buf.

    With eof=False the trailing chunk that ended only because buf did is left out: a streaming caller keeps
    buf[cuts[-1]:] (all of buf if there is no cut) and puts it in front of the next piece. Raises
    TypeError for a non-contiguous or non-buffer buf, ValueError for bad sizes.
    """
    mask_s, mask_l = check_fastcdc_args(min_size, avg_size, max_size, normalization)
    view = _contiguous(buf, "buf")
    end = len(view)
    cuts = []
    start = 0
    while start < end:
        length = _find_cut(view, start, end, min_size, avg_size, max_size, mask_s, mask_l)
        if length == 0:
            if eof:
                cuts.append(end)
            break
        start += length
        cuts.append(start)
    return cuts


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

