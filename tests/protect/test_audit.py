"""Audits: challenges are fixed by the beacon and unpredictable without it, honest proofs pass, and each cheat is
caught: a holder that deleted 10% of a piece (within 12 audits, ≥ 99% of many trials), one that answers only some
challenges, one that replays an old proof, one whose copy is damaged."""

import os
import random

import pytest
from hypothesis import given, strategies as st

from edge.errors import DecodeError
from edge.identity import Identity
from edge.protect import audit, merkle
from edge.protect.merkle import LEAF, SUBTREE

AUDITOR = Identity.from_seed(b"a" * 32)
HOLDER = Identity.from_seed(b"h" * 32)


def _piece(size, seed=1):
    return random.Random(seed).randbytes(size)


def _reader(piece):
    return lambda b: piece[b * SUBTREE:(b + 1) * SUBTREE]


def _round(secret, piece_root, leaves, nonce=None):
    beacon = audit.open_beacon(secret, audit.commitment(secret))
    nonce = nonce or audit.new_nonce()
    return nonce, audit.challenge(beacon, AUDITOR.public_key, piece_root, nonce, leaves)


def test_an_honest_holder_passes_and_the_proof_round_trips():
    piece = _piece(5 * SUBTREE + 300)
    tree = merkle.build(piece)
    nonce, indices = _round(audit.new_secret(), tree.root, merkle.leaf_count(len(piece)))
    assert len(set(indices)) == 4
    proof = audit.answer(HOLDER, _reader(piece), tree.subtree_roots, len(piece), tree.root, nonce, indices)
    again = audit.parse_proof(audit.serialize_proof(proof))
    assert again == proof
    verdict = audit.check(tree.root, len(piece), indices, again, HOLDER.public_key, nonce=nonce)
    assert verdict and verdict.reason == ""
    assert not audit.check(tree.root, len(piece), indices, again, AUDITOR.public_key, nonce=nonce)
    size = len(audit.serialize_proof(proof))
    print(f"\naudit answer: {size} bytes for 4 leaves of a {len(piece)}-byte piece; reads ≤ 4 × 16 KiB")


def test_challenges_depend_on_everything_and_are_distinct():
    root, nonce = bytes(32), bytes(16)
    base = audit.challenge(b"b" * 32, b"x", root, nonce, 1000)
    assert base == audit.challenge(b"b" * 32, b"x", root, nonce, 1000)
    for other in (audit.challenge(b"c" * 32, b"x", root, nonce, 1000), audit.challenge(b"b" * 32, b"y", root, nonce, 1000),
                  audit.challenge(b"b" * 32, b"x", b"\1" * 32, nonce, 1000),
                  audit.challenge(b"b" * 32, b"x", root, b"\1" * 16, 1000)):
        assert other != base
    assert sorted(audit.challenge(b"b" * 32, b"x", root, nonce, 3)) == [0, 1, 2]   # fewer leaves than s
    assert audit.challenge(b"b" * 32, b"x", root, nonce, 1) == [0]


def test_the_beacon_opens_only_its_commitment():
    secret = audit.new_secret()
    committed = audit.commitment(secret)
    assert audit.open_beacon(secret, committed) != audit.open_beacon(secret, committed, [b"epoch root"])
    assert audit.open_beacon(secret, committed, [b"a", b"b"]) == audit.open_beacon(secret, committed, [b"b", b"a"])
    with pytest.raises(DecodeError, match="commitment"):
        audit.open_beacon(audit.new_secret(), committed)


def test_a_replayed_proof_is_refused():
    piece = _piece(40 * LEAF)
    tree = merkle.build(piece)
    secret = audit.new_secret()
    old_nonce, old_indices = _round(secret, tree.root, 40)
    old = audit.answer(HOLDER, _reader(piece), tree.subtree_roots, len(piece), tree.root, old_nonce, old_indices)
    new_nonce = audit.new_nonce()
    # even when the new challenge happens to ask the same leaves, the nonce the proof was signed over differs
    verdict = audit.check(tree.root, len(piece), old_indices, old, HOLDER.public_key, nonce=new_nonce)
    assert not verdict and "replay" in verdict.reason
    forged = audit.Proof(old.piece_root, new_nonce, old.indices, old.leaves, old.paths, old.signature)
    verdict = audit.check(tree.root, len(piece), old_indices, forged, HOLDER.public_key, nonce=new_nonce)
    assert not verdict and "signed" in verdict.reason


def test_a_holder_answering_only_some_challenges_fails():
    piece = _piece(40 * LEAF)
    tree = merkle.build(piece)
    nonce, indices = _round(audit.new_secret(), tree.root, 40)
    part = audit.answer(HOLDER, _reader(piece), tree.subtree_roots, len(piece), tree.root, nonce, indices[:2])
    verdict = audit.check(tree.root, len(piece), indices, part, HOLDER.public_key, nonce=nonce)
    assert not verdict and verdict.reason == "the proof answers 2 of the 4 challenged leaves"
    swapped = audit.answer(HOLDER, _reader(piece), tree.subtree_roots, len(piece), tree.root, nonce,
                           indices[:3] + [(indices[3] + 1) % 40 if (indices[3] + 1) % 40 not in indices else 39])
    assert not audit.check(tree.root, len(piece), indices, swapped, HOLDER.public_key, nonce=nonce)


def test_a_damaged_copy_cannot_answer():
    piece = bytearray(_piece(4 * SUBTREE))
    tree = merkle.build(piece)
    for b in range(4):
        piece[b * SUBTREE + 7] ^= 1
    nonce, indices = _round(audit.new_secret(), tree.root, 64)
    with pytest.raises(merkle.ProofError):
        audit.answer(HOLDER, _reader(piece), tree.subtree_roots, len(piece), tree.root, nonce, indices)


class _DeletedTenPercent:
    """The strongest cheater that dropped 10% of the leaves: it kept the whole tree (every hash), so it answers
    every leaf it still has with a true proof and a missing one with made-up bytes on the true path."""

    def __init__(self, piece, tree, rng):
        n = merkle.leaf_count(len(piece))
        self.piece, self.tree, self.size = piece, tree, len(piece)
        self.missing = set(rng.sample(range(n), n // 10))
        self.rng = rng

    def answer(self, nonce, indices):
        leaves = [self.rng.randbytes(LEAF) if i in self.missing else self.piece[i * LEAF:(i + 1) * LEAF]
                  for i in indices]
        paths = [tuple(self.tree.path(i)) for i in indices]
        unsigned = audit.Proof(self.tree.root, nonce, tuple(indices), tuple(leaves), tuple(paths))
        return audit.Proof(unsigned.piece_root, nonce, unsigned.indices, unsigned.leaves, unsigned.paths,
                           HOLDER.sign(audit._signed_body(unsigned)))


def test_a_holder_that_deleted_ten_percent_is_caught_within_twelve_audits():
    rng = random.Random(16)     # fixed: the figure is reproducible, the audits themselves are the real code
    piece = rng.randbytes(256 * LEAF)
    tree = merkle.build(piece)
    trials, caught_by, audits = 3000, [], 0
    for _ in range(trials):
        cheat = _DeletedTenPercent(piece, tree, rng)
        for n in range(1, 13):
            secret, nonce = rng.randbytes(32), rng.randbytes(16)
            beacon = audit.open_beacon(secret, audit.commitment(secret))
            indices = audit.challenge(beacon, AUDITOR.public_key, tree.root, nonce, 256)
            verdict = audit.check(tree.root, len(piece), indices, cheat.answer(nonce, indices), HOLDER.public_key,
                                  nonce=nonce)
            audits += 1
            assert bool(verdict) == (not cheat.missing & set(indices))   # fails exactly when a missing leaf is asked
            if not verdict:
                caught_by.append(n)
                break
    rate = len(caught_by) / trials
    one = sum(1 for n in caught_by if n == 1) / trials
    survive = (231 * 230 * 229 * 228) / (256 * 255 * 254 * 253)   # 4 distinct leaves all among the 231 kept
    print(f"\n10% deleted (25 of 256 leaves): caught in the first audit {one:.3f} of {trials} trials (model "
          f"1 - C(231,4)/C(256,4) = {1 - survive:.3f}); within 12 audits {rate:.4f} (model {1 - survive ** 12:.4f}); "
          f"{audits} audits run")
    assert rate >= 0.99


@given(st.binary(max_size=2000))
def test_parse_proof_never_crashes(raw):
    try:
        audit.parse_proof(raw)
    except DecodeError:
        pass


def test_parse_proof_refuses_out_of_bounds():
    ok = audit.Proof(bytes(32), bytes(16), (1,), (b"x",), ((bytes(32),),), bytes(64))
    assert audit.parse_proof(audit.serialize_proof(ok)) == ok
    for bad in (ok.__class__(bytes(31), *[getattr(ok, f) for f in ("nonce", "indices", "leaves", "paths", "signature")]),
                audit.Proof(bytes(32), bytes(16), (1, 2), (b"x",), ((bytes(32),),), bytes(64)),
                audit.Proof(bytes(32), bytes(16), (1,), (b"x" * 1025,), ((bytes(32),),), bytes(64)),
                audit.Proof(bytes(32), bytes(16), (-1,), (b"x",), ((bytes(32),),), bytes(64)),
                audit.Proof(bytes(32), bytes(16), (1,), (b"x",), ((bytes(31),),), bytes(64))):
        with pytest.raises(DecodeError):
            audit.parse_proof(audit.serialize_proof(bad))
