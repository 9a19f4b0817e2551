"""Pure-Python reference of the hashing kernels (native/_hashing.pyx): same API, results and errors."""

import hashlib
import operator

DIGEST_SIZE = 32


def backend():
    """What hashes: hashlib, one call per block."""
    return "hashlib, one call per block (pure-Python reference)"


def lanes():
    """Buffers a batch hashes at the same time: one here."""
    return 1


def sha256_many(blocks):
    """One 32-byte SHA2-256 digest per block.

    blocks: bytes-like objects (bytes, bytearray, C-contiguous memoryview). A block that is not one raises
    TypeError naming its index.
    """
    return [hashlib.sha256(_contiguous(block, f"blocks[{i}]")).digest() for i, block in enumerate(blocks)]


def sha256_spans(buf, offsets, out=None):
    """SHA2-256 of consecutive spans of buf: span i is buf[offsets[i-1]:offsets[i]], span 0 starts at 0.

    Returns the digests concatenated (32 bytes each), or writes them into out and returns None.
    Raises TypeError if buf or out is not a C-contiguous bytes-like object, ValueError if offsets are not
    strictly increasing and positive, run past the end of buf, or out is read-only or the wrong size.
    out may share memory with buf: every span is hashed before out is written.
    """
    offsets = tuple(offsets)
    view = _contiguous(buf, "buf")
    prev = 0
    for i, off in enumerate(offsets):
        off = operator.index(off)
        if off <= prev:
            after = f"offsets[{i - 1}] = {prev}" if i else "the start of buf (0)"
            raise ValueError(f"offsets must be strictly increasing and positive: offsets[{i}] = {off} "
                             f"does not come after {after}")
        prev = off
    if prev > view.nbytes:
        raise ValueError(f"offsets[{len(offsets) - 1}] = {prev} is past the end of buf ({view.nbytes} bytes)")
    if out is not None:
        dest = _contiguous(out, "out")
        if dest.readonly:
            raise ValueError("out is read-only; pass a bytearray or a writable memoryview")
        if dest.nbytes != DIGEST_SIZE * len(offsets):
            raise ValueError(f"out must be exactly 32 * len(offsets) = {DIGEST_SIZE * len(offsets)} bytes, "
                             f"got {dest.nbytes}")
    digests = []  # all of them before writing out, which may alias buf
    start = 0
    for end in offsets:
        digests.append(hashlib.sha256(view[start:end]).digest())
        start = end
    joined = b"".join(digests)
    if out is None:
        return joined
    dest[:] = joined
    return None


MAX_PREFIX = 64


def sha256_runs(buf, width, prefix=b""):
    """SHA2-256 of prefix ‖ run for each consecutive run of `width` bytes of buf (the last one may be shorter),
    the digests concatenated (32 bytes each); an empty buf gives b"".

    Raises TypeError if buf or prefix is not a C-contiguous bytes-like object, ValueError if width is not
    positive or prefix is over MAX_PREFIX bytes.
    """
    width = operator.index(width)
    if width <= 0:
        raise ValueError(f"width must be positive, not {width}")
    pre = _contiguous(prefix, "prefix")
    if pre.nbytes > MAX_PREFIX:
        raise ValueError(f"prefix is {pre.nbytes} bytes, over the {MAX_PREFIX} allowed")
    view = _contiguous(buf, "buf")
    start = hashlib.sha256(pre)
    digests = []
    for off in range(0, view.nbytes, width):
        h = start.copy()
        h.update(view[off:off + width])
        digests.append(h.digest())
    return b"".join(digests)

def _contiguous(obj, what):
    """obj as a flat byte memoryview; TypeError naming `what` if it is not a C-contiguous bytes-like object."""
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object (bytes, bytearray, memoryview), "
                        f"not {type(obj).__name__}") from None
    if not view.c_contiguous:
        raise TypeError(f"{what} must be C-contiguous; copy it with bytes() first")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view
