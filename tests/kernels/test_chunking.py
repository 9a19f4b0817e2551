"""The native FastCDC and fixed-size chunkers against their pure-Python reference."""

import importlib.util
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import _chunking, ref_chunking

NATIVE_DIR = Path(__file__).resolve().parents[2] / "native"
# Small sizes keep the pure-Python reference quick while exercising every branch of the scan.
SMALL = dict(min_size=256, avg_size=1024, max_size=4096)


def randbytes(n, seed=0):
    return random.Random(seed).randbytes(n)


def lengths(cuts):
    return [b - a for a, b in zip([0] + cuts[:-1], cuts)]


def assert_invariants(cuts, total, min_size, max_size, eof=True):
    assert all(a < b for a, b in zip(cuts, cuts[1:])), "cuts must be strictly increasing"
    sizes = lengths(cuts)
    body = sizes[:-1] if eof else sizes
    # A content cut comes after at least one hashed byte, past min_size; a forced one at max_size.
    assert all(min_size < s <= max_size or s == max_size for s in body)
    if eof:
        assert cuts[-1] == total if total else cuts == []
        assert 0 < sizes[-1] <= max_size if sizes else True
    else:
        assert total - (cuts[-1] if cuts else 0) < max_size


def test_gear_header_is_regenerated_exactly():
    spec = importlib.util.spec_from_file_location("gen_fastcdc_gear", NATIVE_DIR / "gen_fastcdc_gear.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = (NATIVE_DIR / "fastcdc_gear.h").read_text()
    assert gen.render() == text, "native/fastcdc_gear.h is stale: run python native/gen_fastcdc_gear.py"
    tables = {
        name: [int(v, 16) for v in re.findall(r"0x([0-9a-f]{16})", body)]
        for name, body in re.findall(r"uint64_t (\w+)\[256\] = \{(.*?)\};", text, re.S)
    }
    assert tables["GEAR"] == list(ref_chunking.GEAR) == gen.gear_table()
    assert tables["GEAR_LS"] == [(g << 1) & (2**64 - 1) for g in ref_chunking.GEAR]


def test_masks_match_and_spare_bit_63():
    for bits in range(1, 49):
        mask = ref_chunking.gear_mask(bits)
        assert _chunking._gear_mask(bits) == mask
        assert bin(mask).count("1") == bits
        assert mask < 1 << 63 and mask >> 62 == 1  # highest bit used is 62, so mask << 1 fits
    assert _chunking._gear_mask(0) == _chunking._gear_mask(49) == 0
    with pytest.raises(ValueError, match="1..48 bits"):
        ref_chunking.gear_mask(49)


@pytest.mark.parametrize("avg_size", [256, 1000, 1024, 1448, 1449, 3000, 262144, 300000])
def test_mask_bits_round_log2(avg_size):
    # sqrt(2) * 1024 = 1448.2: 1448 rounds down to 2**10, 1449 up to 2**11.
    for level in range(4):
        mask_s, mask_l = ref_chunking.check_fastcdc_args(64, avg_size, avg_size, level)
        bits_s, bits_l = _chunking._mask_bits(64, avg_size, avg_size, level)
        assert (bin(mask_s).count("1"), bin(mask_l).count("1")) == (bits_s, bits_l)
        assert bits_s - bits_l == 2 * level
    assert _chunking._mask_bits(64, 1448, 1448, 0)[0] == 10
    assert _chunking._mask_bits(64, 1449, 1449, 0)[0] == 11


def some_bytes(max_size):
    """Hypothesis' own binaries (often repetitive) or seeded random bytes (what real content looks like)."""
    return st.one_of(
        st.binary(max_size=max_size),
        st.builds(randbytes, st.integers(0, max_size), st.integers(0, 2**32)),
    )


@st.composite
def chunk_params(draw):
    min_size = draw(st.integers(64, 600))
    avg_size = draw(st.integers(max(min_size, 256), 2048))
    max_size = draw(st.integers(avg_size, 6000))
    return dict(min_size=min_size, avg_size=avg_size, max_size=max_size, normalization=draw(st.integers(0, 3)))


@settings(max_examples=60, deadline=None)
@given(some_bytes(20000), chunk_params(), st.booleans())
def test_native_equals_reference(data, params, eof):
    native = _chunking.fastcdc_cuts(data, eof=eof, **params)
    assert native == ref_chunking.fastcdc_cuts(data, eof=eof, **params)
    assert_invariants(native, len(data), params["min_size"], params["max_size"], eof)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 255, 257, 4095, 4096, 4097, 20001])
@pytest.mark.parametrize("eof", [True, False])
def test_native_equals_reference_edge_sizes(size, eof):
    data = randbytes(size, seed=size)
    for normalization in range(4):
        native = _chunking.fastcdc_cuts(data, normalization=normalization, eof=eof, **SMALL)
        assert native == ref_chunking.fastcdc_cuts(data, normalization=normalization, eof=eof, **SMALL)
        assert_invariants(native, size, SMALL["min_size"], SMALL["max_size"], eof)


@pytest.mark.parametrize("eof", [True, False])
def test_min_equals_max_is_fixed_size(eof):
    data = randbytes(1000, seed=11)
    for total in (0, 255, 256, 257, 512, 1000):
        cuts = _chunking.fastcdc_cuts(data[:total], 256, 256, 256, eof=eof)
        assert cuts == ref_chunking.fastcdc_cuts(data[:total], 256, 256, 256, eof=eof)
        full = list(range(256, total + 1, 256))
        assert cuts == (full + [total] if eof and total % 256 else full)


def test_native_equals_reference_default_sizes():
    data = randbytes(3 * 1024 * 1024 + 1, seed=5)
    native = _chunking.fastcdc_cuts(memoryview(data))
    assert native == ref_chunking.fastcdc_cuts(data)
    assert_invariants(native, len(data), 65536, 1048576)


@pytest.mark.slow
def test_native_equals_reference_large():
    data = randbytes(24 * 1024 * 1024, seed=6)
    for params in (dict(), dict(min_size=16384, avg_size=65536, max_size=262144, normalization=2)):
        assert _chunking.fastcdc_cuts(data, **params) == ref_chunking.fastcdc_cuts(data, **params)


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_uniform_data(fill):
    # No content to cut on: every chunk is the same size, whichever that is.
    data = bytes([fill]) * 50000
    native = _chunking.fastcdc_cuts(data, **SMALL)
    assert native == ref_chunking.fastcdc_cuts(data, **SMALL)
    assert_invariants(native, len(data), SMALL["min_size"], SMALL["max_size"])
    assert len(set(lengths(native)[:-1])) == 1


def test_invariants_on_a_few_mib():
    data = randbytes(6 * 1024 * 1024, seed=7)
    for min_size, avg_size, max_size in [(4096, 16384, 65536), (65536, 262144, 1048576), (64, 256, 1024)]:
        cuts = _chunking.fastcdc_cuts(data, min_size, avg_size, max_size)
        assert_invariants(cuts, len(data), min_size, max_size)
        tail = _chunking.fastcdc_cuts(data, min_size, avg_size, max_size, eof=False)
        assert tail == cuts[: len(tail)] and len(cuts) - len(tail) in (0, 1)


def stream_cuts(chunker, pieces, **params):
    """Cuts over the concatenated pieces, feeding them one at a time as a streaming caller would."""
    cuts, carry, base = [], b"", 0
    for piece in pieces:
        buf = carry + piece
        found = chunker.fastcdc_cuts(buf, eof=False, **params)
        cuts += [base + c for c in found]
        kept = found[-1] if found else 0
        base += kept
        carry = buf[kept:]
    cuts += [base + c for c in chunker.fastcdc_cuts(carry, eof=True, **params)]
    return cuts


def split(data, points):
    points = sorted(set(points))
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


@settings(max_examples=60, deadline=None)
@given(some_bytes(30000), st.lists(st.integers(0, 30000), max_size=15), chunk_params())
def test_streaming_equals_one_call(data, points, params):
    pieces = split(data, [p for p in points if p <= len(data)])
    whole = _chunking.fastcdc_cuts(data, **params)
    assert stream_cuts(_chunking, pieces, **params) == whole


def test_streaming_equals_one_call_reference():
    data = randbytes(40000, seed=8)
    pieces = split(data, [1, 300, 301, 5000, 17000, 17001, 39999])
    assert stream_cuts(ref_chunking, pieces, **SMALL) == ref_chunking.fastcdc_cuts(data, **SMALL)


def test_streaming_in_random_pieces_of_mib():
    rng = random.Random(9)
    data = randbytes(8 * 1024 * 1024, seed=9)
    pieces = split(data, [rng.randrange(len(data)) for _ in range(40)])
    params = dict(min_size=16384, avg_size=65536, max_size=262144)
    assert stream_cuts(_chunking, pieces, **params) == _chunking.fastcdc_cuts(data, **params)


def test_boundaries_resynchronise_after_an_insertion():
    # Content-defined: bytes inserted near the front move the later cuts by the same amount.
    data = randbytes(1024 * 1024, seed=10)
    params = dict(min_size=1024, avg_size=4096, max_size=16384)
    before = _chunking.fastcdc_cuts(data, **params)
    after = _chunking.fastcdc_cuts(data[:5000] + b"inserted!" * 11 + data[5000:], **params)
    shifted = {c - 99 for c in after}
    assert set(before[10:]) <= shifted


@pytest.mark.parametrize(
    "args, pattern",
    [
        (dict(min_size=63), r"64 <= min_size <= avg_size <= max_size <= 1073741824 \(1 GiB\); got min_size=63,"),
        (dict(min_size=300000), r"got min_size=300000, avg_size=262144, max_size=1048576"),
        (dict(max_size=100000), r"got min_size=65536, avg_size=262144, max_size=100000"),
        (dict(max_size=2**30 + 1), r"max_size <= 1073741824"),
        (dict(min_size=64, avg_size=255, max_size=1024), r"avg_size must be at least 256, got 255"),
        (dict(normalization=4), r"normalization must be 0..3 \(1 is usual\), got 4"),
        (dict(normalization=-1), r"normalization must be 0..3"),
    ],
)
def test_bad_sizes(args, pattern):
    messages = []
    for impl in (_chunking, ref_chunking):
        with pytest.raises(ValueError, match=pattern) as info:
            impl.fastcdc_cuts(b"", **args)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("impl", [_chunking, ref_chunking], ids=["native", "ref"])
def test_sizes_must_be_integers(impl):
    with pytest.raises(TypeError, match="'float' object cannot be interpreted as an integer"):
        impl.fastcdc_cuts(b"", avg_size=262144.0)


@pytest.mark.parametrize("impl", [_chunking, ref_chunking], ids=["native", "ref"])
def test_bad_buffers(impl):
    with pytest.raises(TypeError, match="buf must be a bytes-like object .* not str"):
        impl.fastcdc_cuts("text")
    with pytest.raises(TypeError, match="buf must be C-contiguous"):
        impl.fastcdc_cuts(memoryview(bytes(1000))[::3])


def test_buffer_released():
    data = bytearray(randbytes(5000))
    _chunking.fastcdc_cuts(data, **SMALL)
    data.extend(b"more")  # BufferError here would mean a leaked export


@pytest.mark.parametrize("impl", [_chunking, ref_chunking], ids=["native", "ref"])
def test_fixed_cuts(impl):
    assert impl.fixed_cuts(0, 10) == []
    assert impl.fixed_cuts(5, 10) == [5]
    assert impl.fixed_cuts(10, 10) == [10]
    assert impl.fixed_cuts(25, 10) == [10, 20, 25]
    assert impl.fixed_cuts(3, 1) == [1, 2, 3]
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        impl.fixed_cuts(10, 0)
    with pytest.raises(ValueError, match="length must be non-negative, got -1"):
        impl.fixed_cuts(-1, 10)


@given(st.integers(0, 200_000), st.integers(1, 100_000))
def test_fixed_cuts_native_equals_reference(length, size):
    cuts = _chunking.fixed_cuts(length, size)
    assert cuts == ref_chunking.fixed_cuts(length, size)
    assert sum(lengths(cuts)) == length and all(0 < s <= size for s in lengths(cuts))
