"""The Merkle tree over a piece: SHA-256 over 1 KiB leaves (the last one short), domain-separated so a leaf can
never pass for a node: leaf = H(0x00 ‖ bytes), node = H(0x01 ‖ left ‖ right). Each level pairs its nodes from
the left; an odd last node is promoted unchanged to the level above.

Pairing from the left makes level 4 the roots of the piece's 16 KiB blocks (node i of level j covers leaves
i·2^j … (i+1)·2^j − 1), so a holder keeps that level beside the piece (32 bytes per 16 KiB, 0.2%) and proves any
leaf by reading one 16 KiB block. A verifier needs only the 32-byte root and the piece's size: the size fixes
the tree's shape, so a path of the wrong length is refused before any hashing.
"""

import hashlib
from dataclasses import dataclass

from edge.errors import DecodeError, EdgeError
from edge.kernels import sha256_runs

LEAF = 1024
SUBTREE = 16 * LEAF
LEAVES_PER_SUBTREE = SUBTREE // LEAF
SUBTREE_LEVEL = 4          # 2**4 == LEAVES_PER_SUBTREE
HASH = 32
_LEAF_PREFIX = hashlib.sha256(b"\x00")
_NODE_PREFIX = hashlib.sha256(b"\x01")


class ProofError(EdgeError):
    """This holder cannot prove the leaf: its copy of the block no longer matches the cached subtree root."""


def leaf_count(size: int) -> int:
    """Leaves of a piece of `size` bytes (at least 1: an empty piece has one empty leaf)."""
    if size < 0:
        raise ValueError(f"a piece size cannot be negative ({size})")
    return max(1, -(-size // LEAF))


def subtree_count(size: int) -> int:
    return -(-leaf_count(size) // LEAVES_PER_SUBTREE)


def leaf_hash(leaf) -> bytes:
    h = _LEAF_PREFIX.copy()
    h.update(leaf)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    h = _NODE_PREFIX.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def _leaf_level(view) -> bytes:
    """The leaf hashes of a piece, concatenated: one native call over the piece's own buffer (no per-leaf
    object or copy; twice hashlib-per-leaf's speed on 2 MiB pieces)."""
    if not len(view):
        return leaf_hash(b"")
    return sha256_runs(view, LEAF, b"\x00")


def _up(level: bytes) -> bytes:
    """The level above (a level is its node hashes concatenated): every pair hashed in one call, an odd last node
    promoted."""
    pairs = len(level) // (2 * HASH)
    above = sha256_runs(memoryview(level)[:pairs * 2 * HASH], 2 * HASH, b"\x01")
    if len(level) % (2 * HASH):
        above += level[-HASH:]
    return above


def _levels(level: bytes) -> list[bytes]:
    """Every level from the given one up to the root (levels[-1] is the root's 32 bytes)."""
    levels = [level]
    while len(levels[-1]) > HASH:
        levels.append(_up(levels[-1]))
    return levels


def _siblings(levels: list[bytes], index: int) -> list[bytes]:
    """The path of node `index` of levels[0] up to the top of levels: one sibling per level where it has one."""
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level) // HASH:
            path.append(level[sibling * HASH:(sibling + 1) * HASH])
        index //= 2
    return path


@dataclass(frozen=True)
class Tree:
    """A piece's whole tree and its size in bytes: levels[0] the leaf hashes, levels[-1] the root, each level its
    node hashes concatenated (32 bytes each)."""
    size: int
    levels: list

    @property
    def root(self) -> bytes:
        return self.levels[-1]

    @property
    def subtree_roots(self) -> list[bytes]:
        """The roots of the piece's 16 KiB blocks (the level a holder caches)."""
        level = self.levels[min(SUBTREE_LEVEL, len(self.levels) - 1)]
        return [level[i:i + HASH] for i in range(0, len(level), HASH)]

    def path(self, index: int) -> list[bytes]:
        """The siblings from leaf `index` up to the root, lowest first."""
        count = len(self.levels[0]) // HASH
        if not 0 <= index < count:
            raise IndexError(f"leaf {index} is outside a piece of {count} leaves")
        return _siblings(self.levels, index)


def build(piece) -> Tree:
    """The tree of a piece (bytes-like)."""
    view = memoryview(piece).cast("B")
    return Tree(len(view), _levels(_leaf_level(view)))


def root_of(piece) -> bytes:
    return build(piece).root


def subtree_bytes(tree: Tree) -> bytes:
    """The cached level as stored beside the piece: the subtree roots, 32 bytes each, in order."""
    return tree.levels[min(SUBTREE_LEVEL, len(tree.levels) - 1)]


def parse_subtrees(raw: bytes, size: int | None = None) -> list[bytes]:
    """The subtree roots stored by subtree_bytes; with `size`, also checks there is one per 16 KiB block."""
    if len(raw) % HASH or not raw:
        raise DecodeError(f"a subtree file is a non-empty multiple of {HASH} bytes, not {len(raw)} bytes; "
                          "rebuild it from the piece")
    roots = [bytes(raw[i:i + HASH]) for i in range(0, len(raw), HASH)]
    if size is not None and len(roots) != subtree_count(size):
        raise DecodeError(f"a piece of {size} bytes has {subtree_count(size)} subtree roots, the file holds "
                          f"{len(roots)}; rebuild it from the piece")
    return roots


def root_from_subtrees(subtree_roots: list[bytes]) -> bytes:
    if not subtree_roots:
        raise IndexError("a piece has at least one subtree root")
    return _levels(b"".join(subtree_roots))[-1]


def prove(read_block, subtree_roots: list[bytes], size: int, index: int) -> tuple[bytes, list[bytes]]:
    """(leaf bytes, path) for leaf `index`, reading only its 16 KiB block through read_block(block index).

    Raises ProofError when the block read no longer hashes to its cached root (the piece is damaged: the holder
    should say so rather than send a proof that fails)."""
    count = leaf_count(size)
    if not 0 <= index < count:
        raise IndexError(f"leaf {index} is outside a piece of {count} leaves")
    if len(subtree_roots) != subtree_count(size):
        raise ProofError(f"{len(subtree_roots)} cached subtree roots for a piece that has {subtree_count(size)}")
    b = index // LEAVES_PER_SUBTREE
    block = memoryview(read_block(b)).cast("B")
    want = min(SUBTREE, size - b * SUBTREE)
    if len(block) != want:
        raise ProofError(f"block {b} read {len(block)} bytes, {want} expected")
    inner = _levels(_leaf_level(block))
    if inner[-1] != subtree_roots[b]:
        raise ProofError(f"block {b} no longer matches its subtree root: the piece is damaged")
    within = index % LEAVES_PER_SUBTREE
    path = _siblings(inner, within)
    if count > LEAVES_PER_SUBTREE:
        path += _siblings(_levels(b"".join(subtree_roots)), b)
    start = within * LEAF
    return bytes(block[start:start + LEAF]), path


def _shape(size: int, index: int) -> list[tuple[bool, bool]]:
    """For each level from the leaves up: (has a sibling, sibling is on the left)."""
    count, shape = leaf_count(size), []
    while count > 1:
        sibling = index ^ 1
        shape.append((sibling < count, index & 1 == 1))
        index //= 2
        count = -(-count // 2)
    return shape


def verify(root: bytes, size: int, index: int, leaf, path: list[bytes]) -> bool:
    """True when `leaf` is leaf `index` of the piece of `size` bytes whose root is `root`."""
    count = leaf_count(size)
    if not 0 <= index < count:
        return False
    want = min(LEAF, size - index * LEAF)
    if len(leaf) != want:
        return False
    shape = _shape(size, index)
    if len(path) != sum(has for has, _ in shape) or any(len(p) != HASH for p in path):
        return False
    h, siblings = leaf_hash(leaf), iter(path)
    for has, left in shape:
        if has:
            s = next(siblings)
            h = node_hash(s, h) if left else node_hash(h, s)
    return h == root
