"""The native batch SHA2-256 kernel against hashlib and its pure-Python reference."""

import array
import hashlib
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import _hashing, ref_hashing

IMPLS = [pytest.param(_hashing, id="native"), pytest.param(ref_hashing, id="ref")]


def hashlib_many(blocks):
    return [hashlib.sha256(b).digest() for b in blocks]


def randbytes(n, seed=0):
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("impl", IMPLS)
def test_sizes_match_hashlib(impl):
    data = randbytes(3 * 1024 * 1024 + 7)
    blocks = [data[:n] for n in (0, 1, 2, 55, 56, 63, 64, 65, 1023, 4097, 262143)] + [data]
    assert impl.sha256_many(blocks) == hashlib_many(blocks)


@pytest.mark.parametrize("impl", IMPLS)
def test_buffer_kinds(impl):
    data = randbytes(10000, seed=1)
    ints = array.array("I", range(100))  # multi-byte items: hashed as their raw bytes, like hashlib
    blocks = [data, bytearray(data[:999]), memoryview(data)[3:5001], ints, memoryview(ints)]
    assert impl.sha256_many(blocks) == hashlib_many(blocks)
    assert impl.sha256_many(iter(blocks[:2])) == hashlib_many(blocks[:2])
    assert impl.sha256_many([]) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_many_native_equals_reference(blocks):
    expected = hashlib_many(blocks)
    assert _hashing.sha256_many(blocks) == expected
    assert ref_hashing.sha256_many(blocks) == expected


@st.composite
def buffer_and_offsets(draw):
    buf = draw(st.binary(max_size=5000))
    ends = sorted(draw(st.sets(st.integers(1, max(len(buf), 1)), max_size=12))) if buf else []
    return buf, ends


@settings(max_examples=80, deadline=None)
@given(buffer_and_offsets())
def test_spans_native_equals_reference(case):
    buf, ends = case
    starts = [0] + ends[:-1]
    expected = b"".join(hashlib.sha256(buf[s:e]).digest() for s, e in zip(starts, ends))
    assert _hashing.sha256_spans(buf, ends) == expected
    assert ref_hashing.sha256_spans(buf, ends) == expected
    for impl in (_hashing, ref_hashing):
        out = bytearray(32 * len(ends))
        assert impl.sha256_spans(memoryview(buf), ends, out) is None
        assert out == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_spans_large_and_partial(impl):
    data = randbytes(4 * 1024 * 1024 + 3, seed=2)
    ends = [1, 2, 100_000, 1_048_577, 4 * 1024 * 1024]  # the last span stops short of the end
    starts = [0] + ends[:-1]
    expected = b"".join(hashlib.sha256(data[s:e]).digest() for s, e in zip(starts, ends))
    out = memoryview(bytearray(32 * len(ends) + 64))[32 : 32 + 32 * len(ends)]
    assert impl.sha256_spans(data, ends, out=out) is None
    assert bytes(out) == expected
    assert impl.sha256_spans(data, []) == b""


@pytest.mark.parametrize("impl", IMPLS)
def test_spans_out_aliasing_buf(impl):
    original = randbytes(4096, seed=3)
    ends = [1000, 2000, 4096]
    expected = b"".join(hashlib.sha256(original[s:e]).digest() for s, e in zip([0, 1000, 2000], ends))
    buf = bytearray(original)
    impl.sha256_spans(buf, ends, out=memoryview(buf)[1500:1596])
    assert buf[1500:1596] == expected


def error_of(call):
    """(type, message) of the exception call() raises."""
    with pytest.raises(Exception) as info:
        call()
    return info.type, str(info.value)


def same_error(call, exc_type, pattern):
    """Both implementations raise exc_type with the same message, which matches pattern."""
    native = error_of(lambda: call(_hashing))
    ref = error_of(lambda: call(ref_hashing))
    assert native == ref
    assert native[0] is exc_type
    assert pytest.raises(exc_type, call, _hashing).match(pattern)


def test_many_bad_blocks():
    data = b"x" * 100
    same_error(lambda m: m.sha256_many([data, data, "text"]), TypeError, r"blocks\[2\] must be a bytes-like .* not str")
    same_error(lambda m: m.sha256_many([None]), TypeError, r"blocks\[0\] must be a bytes-like .* not NoneType")
    same_error(lambda m: m.sha256_many([data, memoryview(data)[::2]]), TypeError, r"blocks\[1\] must be C-contiguous")


def test_many_releases_buffers_after_error():
    held = bytearray(b"abc")
    with pytest.raises(TypeError):
        _hashing.sha256_many([held, 42])
    held.extend(b"def")  # BufferError here would mean a leaked export
    _hashing.sha256_many([held])
    held.extend(b"ghi")
    assert held == b"abcdefghi"


@pytest.mark.parametrize(
    "offsets, pattern",
    [
        ([0], r"offsets\[0\] = 0 does not come after the start of buf \(0\)"),
        ([-5], r"offsets\[0\] = -5 does not come after the start"),
        ([10, 10], r"offsets\[1\] = 10 does not come after offsets\[0\] = 10"),
        ([10, 5], r"strictly increasing"),
        ([10, 101], r"offsets\[1\] = 101 is past the end of buf \(100 bytes\)"),
    ],
)
def test_spans_bad_offsets(offsets, pattern):
    same_error(lambda m: m.sha256_spans(b"y" * 100, offsets), ValueError, pattern)


def test_spans_bad_out():
    buf = b"z" * 100
    same_error(lambda m: m.sha256_spans(buf, [50, 100], out=bytearray(63)), ValueError,
               r"out must be exactly 32 \* len\(offsets\) = 64 bytes, got 63")
    same_error(lambda m: m.sha256_spans(buf, [50, 100], out=bytes(64)), ValueError, "out is read-only")
    same_error(lambda m: m.sha256_spans(buf, [50, 100], out=memoryview(bytearray(64)).toreadonly()),
               ValueError, "out is read-only")
    same_error(lambda m: m.sha256_spans(buf, [50, 100], out=[0] * 64), TypeError, "out must be a bytes-like")
    same_error(lambda m: m.sha256_spans(buf, [50, 100], out=memoryview(bytearray(128))[::2]), TypeError,
               "out must be C-contiguous")
    same_error(lambda m: m.sha256_spans("text", [2]), TypeError, "buf must be a bytes-like object")


def test_two_threads_hash_concurrently():
    # Each thread hashes its own blocks many times over while the other runs; both must stay correct.
    data = randbytes(8 * 1024 * 1024, seed=4)
    halves = [
        [memoryview(data)[i : i + 65536] for i in range(0, len(data) // 2, 65536)],
        [data[i : i + 4096] for i in range(len(data) // 2, len(data), 4096)],
    ]
    expected = [hashlib_many(blocks) for blocks in halves]
    start = threading.Barrier(2)
    results = [[], []]

    def work(k):
        start.wait()
        for _ in range(4):
            results[k].append(_hashing.sha256_many(halves[k]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert len(results[k]) == 4
        assert all(r == expected[k] for r in results[k])


def test_backend_names_what_hashes():
    assert "OpenSSL" in _hashing.backend()
    assert "hashlib" in ref_hashing.backend()


TWO_LANE_CHECK = r"""
import hashlib, itertools, json, random, sys
from edge.kernels import _hashing
rng = random.Random(7)
data = rng.randbytes(600_000)
# every padding case (the length mod 64 from 0 to 63, one and two final blocks) on both lanes, lanes of equal
# and unequal lengths (one runs on alone), and lengths under the two-lane minimum mixed in (they go alone)
lengths = [1024 + k for k in range(130)] + [262_144, 262_143, 262_145, 300_001, 1, 55, 56, 1023, 0]
batches = [lengths[i:i + rng.randint(1, 7)] for i in range(0, len(lengths), 3)]
batches += [[rng.choice(lengths) for _ in range(rng.randint(2, 9))] for _ in range(200)]
bad = 0
for batch in batches:
    blocks = [data[s:s + n] for s, n in zip(itertools.count(0, 977), batch)]
    want = [hashlib.sha256(b).digest() for b in blocks]
    bad += _hashing.sha256_many(blocks) != want
    joined = b"".join(blocks)
    ends = [e for e in itertools.accumulate(batch)]
    if 0 not in batch:
        bad += bytes(_hashing.sha256_spans(joined, ends)) != b"".join(want)
print(json.dumps({"backend": _hashing.backend(), "batches": len(batches), "bad": bad}))
"""


@pytest.mark.parametrize("two_lanes", ["1", "0"], ids=["two lanes where the CPU has SHA-NI", "OpenSSL alone"])
def test_both_batch_paths_equal_hashlib(two_lanes):
    """Batches hash two buffers at a time with SHA-NI where the CPU has it (native/sha256_x2.c), else one at a
    time through OpenSSL; HEARTH_SHA256_X2=0 forces the second. Each path, in a process of its own (the choice
    is made once), against hashlib on every padding case and on lanes of unequal length."""
    import json
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", TWO_LANE_CHECK], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HEARTH_SHA256_X2": two_lanes}, check=True)
    result = json.loads(out.stdout)
    assert result["bad"] == 0 and result["batches"] > 200
    has_sha_ni = "with SHA2 instructions" in result["backend"] and os.uname().machine == "x86_64"
    assert ("two blocks at a time" in result["backend"]) == (two_lanes == "1" and has_sha_ni)
