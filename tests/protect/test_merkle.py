"""The piece Merkle tree: known answers for the shape, every leaf of many sizes proves and verifies, a holder's
proof from one 16 KiB block equals the whole tree's path, and any tampering is refused."""

import hashlib
import os

import pytest
from hypothesis import given, strategies as st

from edge.errors import DecodeError
from edge.protect import merkle
from edge.protect.merkle import LEAF, SUBTREE


def _reader(piece):
    return lambda b: piece[b * SUBTREE:(b + 1) * SUBTREE]


def test_known_answers_for_small_shapes():
    h = lambda b: hashlib.sha256(b).digest()
    assert merkle.build(b"").root == h(b"\x00")
    assert merkle.build(b"a").root == h(b"\x00a")
    two = b"x" * LEAF + b"y"
    l0, l1 = h(b"\x00" + b"x" * LEAF), h(b"\x00y")
    assert merkle.build(two).root == h(b"\x01" + l0 + l1)
    three = two[:LEAF] + b"y" * LEAF + b"z"       # the third leaf is promoted past the first level
    l1, l2 = h(b"\x00" + b"y" * LEAF), h(b"\x00z")
    assert merkle.build(three).root == h(b"\x01" + h(b"\x01" + l0 + l1) + l2)


def test_leaf_count():
    assert [merkle.leaf_count(n) for n in (0, 1, LEAF, LEAF + 1, 5 * LEAF)] == [1, 1, 1, 2, 5]
    with pytest.raises(ValueError):
        merkle.leaf_count(-1)


@pytest.mark.parametrize("size", [0, 1, LEAF, LEAF + 1, SUBTREE - 1, SUBTREE, SUBTREE + 1, 3 * SUBTREE + 5 * LEAF + 7,
                                  17 * SUBTREE])
def test_every_leaf_proves_from_one_block(size):
    piece = os.urandom(size)
    tree = merkle.build(piece)
    cached = merkle.parse_subtrees(merkle.subtree_bytes(tree), size)
    assert len(cached) == -(-merkle.leaf_count(size) // 16)
    assert merkle.root_from_subtrees(cached) == tree.root
    for i in range(merkle.leaf_count(size)):
        leaf, path = merkle.prove(_reader(piece), cached, size, i)
        assert leaf == piece[i * LEAF:(i + 1) * LEAF]
        assert path == tree.path(i)
        assert merkle.verify(tree.root, size, i, leaf, path)


@given(st.integers(min_value=1, max_value=40 * LEAF), st.data())
def test_tampering_is_refused(size, data):
    piece = bytes(os.urandom(size))
    tree = merkle.build(piece)
    i = data.draw(st.integers(0, merkle.leaf_count(size) - 1))
    leaf, path = piece[i * LEAF:(i + 1) * LEAF], tree.path(i)
    assert merkle.verify(tree.root, size, i, leaf, path)
    flipped = bytearray(leaf)
    flipped[data.draw(st.integers(0, len(leaf) - 1))] ^= 1
    assert not merkle.verify(tree.root, size, i, bytes(flipped), path)
    last = merkle.leaf_count(size) - 1           # the last leaf's length is fixed by the size
    assert not merkle.verify(tree.root, size + 1, last, piece[last * LEAF:], tree.path(last))
    if path:
        bad = list(path)
        bad[0] = bytes(32)
        assert not merkle.verify(tree.root, size, i, leaf, bad)
        assert not merkle.verify(tree.root, size, i, leaf, path[:-1])
    assert not merkle.verify(tree.root, size, i, leaf, path + [bytes(32)])
    assert not merkle.verify(tree.root, size, merkle.leaf_count(size), leaf, path)


def test_a_damaged_block_cannot_prove():
    piece = bytearray(os.urandom(3 * SUBTREE))
    cached = merkle.build(piece).subtree_roots
    piece[SUBTREE + 5] ^= 0xFF
    with pytest.raises(merkle.ProofError, match="damaged"):
        merkle.prove(_reader(piece), cached, len(piece), 17)
    merkle.prove(_reader(piece), cached, len(piece), 0)  # the other blocks still prove


def test_subtree_file_is_checked():
    with pytest.raises(DecodeError):
        merkle.parse_subtrees(b"x" * 33)
    with pytest.raises(DecodeError, match="2 subtree roots"):
        merkle.parse_subtrees(bytes(32), 2 * SUBTREE)


def _plain_root(piece: bytes) -> tuple[bytes, list[bytes]]:
    """The module docstring's rules with hashlib, one hash at a time: (root, the level-4 nodes)."""
    h = lambda b: hashlib.sha256(b).digest()
    level = [h(b"\x00" + piece[i:i + LEAF]) for i in range(0, len(piece), LEAF)] or [h(b"\x00")]
    levels = [level]
    while len(level) > 1:
        level = [h(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)] + \
            ([level[-1]] if len(level) % 2 else [])
        levels.append(level)
    return level[0], levels[min(4, len(levels) - 1)]


@pytest.mark.parametrize("size", [0, 1, LEAF - 1, 2 * LEAF, 3 * LEAF, 33 * LEAF + 1, 5 * SUBTREE + 3 * LEAF,
                                  (2 << 20) + 7 * LEAF + 3])
def test_roots_follow_the_rules_hash_by_hash(size):
    """The batch hashing per level gives what hashing leaf by leaf and pair by pair gives (odd nodes promoted at
    several levels, a short last leaf)."""
    piece = os.urandom(size)
    root, subtrees = _plain_root(piece)
    tree = merkle.build(bytearray(piece))
    assert tree.root == root
    assert tree.subtree_roots == subtrees
    assert merkle.subtree_bytes(tree) == b"".join(subtrees)
    assert merkle.root_from_subtrees(subtrees) == root
