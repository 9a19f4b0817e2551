"""Segments: a real store's DAG (a file over several segments, a directory of small files like a stream's HLS
segments) cut into segments that hold every block once, in DAG order, at most 8 MiB each, files kept whole;
the layout round-trips; pieces rebuild from any k; a bad block is caught by its CID."""

import itertools
import os
import random

import pytest

from edge.ipld.cid import CID
from edge.protect import segments
from edge.protect.segments import SEGMENT, SegmentError
from edge.store import Store
from edge.store.content import add, walk_blocks
from edge.store.stripe import StripeError, piece_size, rebuild_piece


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store"), reserve=0) as s:
        yield s


def _file(path, size, seed):
    path.write_bytes(random.Random(seed).randbytes(size))
    return str(path)


def test_a_big_file_is_cut_into_bounded_segments_in_dag_order(store, tmp_path):
    root = add(store, _file(tmp_path / "big", 20 << 20, 1)).cid
    cut = list(segments.cut(store.get, root))
    assert len(cut) == 3
    assert all(s.size <= SEGMENT for s in cut)
    in_order = [c for s in cut for c, _ in s.blocks]
    assert in_order == [c for c, _ in walk_blocks(store, root)]       # every block, interior nodes too, once
    print(f"\n20 MiB file: {len(in_order)} blocks in segments of {[s.size for s in cut]} bytes")


def test_a_stream_directory_keeps_each_media_segment_whole(store, tmp_path):
    stream = tmp_path / "stream"
    stream.mkdir()
    for i in range(12):      # HLS-like: 12 media segments of 1.5-2.5 MiB and a playlist
        _file(stream / f"seg{i:03}.m4s", random.Random(i).randrange(1500, 2500) << 10, i)
    (stream / "index.m3u8").write_text("#EXTM3U\n" + "".join(f"seg{i:03}.m4s\n" for i in range(12)))
    root = add(store, str(stream)).cid
    cut = list(segments.cut(store.get, root))
    where = {}
    for n, seg in enumerate(cut):
        assert seg.size <= SEGMENT
        for cid, _ in seg.blocks:
            where[bytes(cid)] = n
    assert sorted(where) == sorted(bytes(c) for c, _ in walk_blocks(store, root))
    from edge.ipld.dagpb import parse_pbnode
    for link in parse_pbnode(store.get(root)).links:
        under = [bytes(c) for c, _ in walk_blocks(store, link.cid)]
        assert len({where[c] for c in under}) == 1, f"{link.name} is split over segments"
    print(f"\nstream of 12 media segments: {len(cut)} protected segments")


@pytest.mark.parametrize("k,m", [(1, 1), (2, 2), (4, 4), (8, 6)])
def test_pieces_rebuild_from_any_k(store, tmp_path, k, m):
    root = add(store, _file(tmp_path / "f", 3 << 20 | 12345, k)).cid
    (seg,) = segments.cut(store.get, root)
    raw = segments.layout(seg)
    pieces = segments.encode(raw, k, m)
    assert len(pieces) == k + m and all(len(p) == piece_size(len(raw), k) for p in pieces)
    choices = list(itertools.combinations(range(k + m), k))
    for chosen in random.Random(0).sample(choices, min(12, len(choices))):
        got = segments.decode({i: bytes(pieces[i]) for i in chosen}, k, m, len(raw))
        assert got == seg
        missing = next(i for i in range(k + m) if i not in chosen)
        assert rebuild_piece({i: pieces[i] for i in chosen}, k, m, len(raw), missing) == pieces[missing]
    with pytest.raises(StripeError, match=f"any {k}"):
        segments.decode({i: pieces[i] for i in range(k - 1)}, k, m, len(raw))


def test_small_segments_stay_small():
    data = os.urandom(1000)
    cid = CID.for_block(data)
    raw = segments.layout(segments.Segment(((cid, data),)))
    pieces = segments.encode(raw, 8, 6)
    assert len(pieces[0]) == -(-len(raw) // 8)        # no stripe padding beyond one shard's rounding
    assert segments.decode({i: pieces[i] for i in range(6, 14)}, 8, 6, len(raw)).blocks == ((cid, data),)


def test_a_tampered_segment_is_refused():
    blocks = tuple((CID.for_block(d), d) for d in (os.urandom(5000), os.urandom(300)))
    raw = bytearray(segments.layout(segments.Segment(blocks)))
    assert segments.parse_layout(raw).blocks == blocks
    raw[-1] ^= 1
    with pytest.raises(SegmentError, match="does not match its CID"):
        segments.parse_layout(raw)
    for bad in (b"", b"\xff\xff\xff\xff", bytes(raw) + b"x", b"\0\0\0\1\xa0"):
        with pytest.raises(SegmentError):
            segments.parse_layout(bad)


from hypothesis import given, strategies as st  # noqa: E402


@given(st.binary(max_size=400))
def test_parse_layout_never_crashes(raw):
    try:
        segments.parse_layout(raw)
    except SegmentError:
        pass


def test_ranges_of_the_data_pieces_are_ranges_of_the_segment():
    from edge.store.stripe import STRIPE_WIDTH, stripe_width
    data = os.urandom(5 * 4 * STRIPE_WIDTH + 777)
    pieces = segments.encode(data, 4, 2)
    w = stripe_width(len(data), 4)
    assert w == STRIPE_WIDTH
    for s in range(5):
        joined = b"".join(bytes(pieces[j][s * w:(s + 1) * w]) for j in range(4))
        assert joined == data[s * 4 * w:(s + 1) * 4 * w]


def test_prepare_gives_pieces_on_their_roots(store, tmp_path):
    from edge.protect import merkle
    root = add(store, _file(tmp_path / "p", 9 << 20, 9)).cid
    prepared = list(segments.prepare(store.get, root, 2, 2))
    assert len(prepared) == 2
    for p in prepared:
        assert [merkle.build(piece).root for piece in p.pieces] == p.roots
        assert segments.decode({2: p.pieces[2], 3: p.pieces[3]}, 2, 2, p.length) == p.segment   # parity only


@pytest.mark.parametrize("k, m", [(1, 2), (2, 2), (4, 4)])
def test_pieces_from_parts_are_the_pieces_of_their_concatenation(k, m):
    from edge.store.stripe import STRIPE_WIDTH, encode_parts, encode_pieces
    rng = random.Random(k)
    for length in (0, 1, STRIPE_WIDTH - 1, k * STRIPE_WIDTH, 3 * k * STRIPE_WIDTH + 12345):
        data = rng.randbytes(length)
        cuts = sorted(rng.randrange(length + 1) for _ in range(7))    # empty parts and parts across stripes too
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, length])]
        assert encode_parts([bytearray(p) for p in parts], k, m) == encode_pieces(data, k, m)


def test_prepare_pieces_are_the_layouts_pieces(store, tmp_path):
    root = add(store, _file(tmp_path / "r", 10 << 20, 11)).cid
    for p in segments.prepare(store.get, root, 4, 4):
        raw = segments.layout(p.segment)
        assert p.length == len(raw) and p.pieces == segments.encode(raw, 4, 4)
