"""sha256_runs (native/sha256_runs.c: a prefix then each fixed-width run of one buffer, what the piece Merkle tree
hashes per level) against hashlib, native and reference alike, with the same errors."""

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import _hashing, ref_hashing

IMPLS = [pytest.param(_hashing, id="native"), pytest.param(ref_hashing, id="ref")]


def expected(buf, width, prefix=b""):
    buf = bytes(buf)
    return b"".join(hashlib.sha256(prefix + buf[i:i + width]).digest() for i in range(0, len(buf), width))


@pytest.mark.parametrize("impl", IMPLS)
def test_leaves_and_nodes_of_a_piece(impl):
    data = random.Random(3).randbytes(2 * 1024 * 1024 + 1000)   # a piece with a short last leaf
    leaves = impl.sha256_runs(data, 1024, b"\x00")
    assert len(leaves) == 32 * 2049
    assert leaves == expected(data, 1024, b"\x00")
    assert impl.sha256_runs(memoryview(leaves)[:64 * 1024], 64, b"\x01") == expected(leaves[:64 * 1024], 64, b"\x01")
    assert impl.sha256_runs(bytearray(data[:5000]), 5000) == hashlib.sha256(data[:5000]).digest()
    assert impl.sha256_runs(b"", 1024, b"\x00") == b""


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 1100), st.binary(max_size=64))
def test_native_equals_reference_and_hashlib(buf, width, prefix):
    want = expected(buf, width, prefix)
    assert _hashing.sha256_runs(buf, width, prefix) == want
    assert ref_hashing.sha256_runs(buf, width, prefix) == want


def _error(call, impl):
    with pytest.raises(Exception) as info:
        call(impl)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("call, exc_type, pattern", [
    (lambda m: m.sha256_runs(b"x", 0), ValueError, "width must be positive, not 0"),
    (lambda m: m.sha256_runs(b"x", -3), ValueError, "width must be positive, not -3"),
    (lambda m: m.sha256_runs(b"x", 4, b"p" * 65), ValueError, "prefix is 65 bytes, over the 64 allowed"),
    (lambda m: m.sha256_runs("text", 4), TypeError, "buf must be a bytes-like object"),
    (lambda m: m.sha256_runs(b"x", 4, "p"), TypeError, "prefix must be a bytes-like object"),
    (lambda m: m.sha256_runs(memoryview(b"xxxx")[::2], 4), TypeError, "buf must be C-contiguous"),
])
def test_errors_are_the_same(call, exc_type, pattern):
    native, ref = _error(call, _hashing), _error(call, ref_hashing)
    assert native == ref
    assert native[0] is exc_type
    assert pytest.raises(exc_type, call, _hashing).match(pattern)


def test_buffers_are_released_after_an_error():
    held = bytearray(b"abc")
    with pytest.raises(ValueError):
        _hashing.sha256_runs(held, 2, b"p" * 65)
    with pytest.raises(TypeError):
        _hashing.sha256_runs(held, 2, "p")
    held.extend(b"def")  # BufferError here would mean a leaked export
    assert _hashing.sha256_runs(held, 3) == expected(held, 3)
