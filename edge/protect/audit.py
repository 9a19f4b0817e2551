"""Storage audits: the beacon, the challenge, the holder's signed proof and the auditor's check, as pure functions.

The beacon. An auditor draws a fresh 32-byte secret for each audit epoch and publishes only its commitment
H("hearth-beacon-commit" ‖ secret) one epoch ahead (with the previous challenge, or in its signed schedule).
When it challenges it reveals the secret; the beacon is H("hearth-beacon" ‖ secret ‖ mixes…), where mixes are
neighbours' signed epoch roots once a ledger exists (none today). A holder cannot predict which leaves will be
asked: the secret is 256 fresh random bits it has only seen hashed, and it has to hold the whole piece for the
whole epoch, because the reveal comes with the challenge and the answer is due by a deadline. The commitment
binds the auditor too: it cannot grind secrets after the fact to pick leaves a colluding holder kept, since a
revealed secret that does not open the published commitment is refused by the holder (open_beacon).

The challenge. indices = the first s distinct values of H(H(beacon ‖ auditor ‖ piece root ‖ nonce) ‖ counter)
mod leaf count (fewer when the piece has fewer leaves). The holder derives them itself; the auditor never sends
indices, so it cannot steer them either. The nonce is the auditor's, fresh per challenge: a proof is signed over
the nonce, so a proof recorded for an earlier challenge is refused (a replay).

A proof reads at most s blocks of 16 KiB (merkle.prove) and carries s leaves of up to 1 KiB and their paths.
"""

import hashlib
import os
from dataclasses import dataclass

from edge.errors import DecodeError
from edge.identity import node_id_of, verify as verify_signature
from edge.ipld import cbor
from edge.protect import merkle

S = 4
MAX_S = 16
NONCE = 16
SECRET = 32
MAX_PATH = 64                   # a tree over 2^64 leaves: far above any piece
PROOF_DOMAIN = b"hearth-audit-proof-v1\0"
MAX_PROOF = MAX_S * (merkle.LEAF + MAX_PATH * (merkle.HASH + 2) + 16) + 256


def new_secret() -> bytes:
    """A fresh beacon secret for one audit epoch (kept by the auditor until it challenges)."""
    return os.urandom(SECRET)


def commitment(secret: bytes) -> bytes:
    """What the auditor publishes an epoch ahead: the hash of its secret, which reveals nothing of it."""
    return hashlib.sha256(b"hearth-beacon-commit" + secret).digest()


def open_beacon(secret: bytes, committed: bytes, mixes=()) -> bytes:
    """The beacon from a revealed secret; DecodeError when the secret does not open the published commitment."""
    if len(secret) != SECRET or commitment(secret) != committed:
        raise DecodeError("the auditor's revealed beacon secret does not match the commitment it published; "
                          "refuse the challenge")
    h = hashlib.sha256(b"hearth-beacon" + secret)
    for mix in sorted(bytes(m) for m in mixes):    # order-free: every holder gets the same beacon
        h.update(hashlib.sha256(mix).digest())
    return h.digest()


def new_nonce() -> bytes:
    return os.urandom(NONCE)


def challenge(beacon: bytes, auditor: bytes, piece_root: bytes, nonce: bytes, leaf_count: int,
              s: int = S) -> list[int]:
    """The s leaf indices to prove (distinct while the piece has that many leaves)."""
    if leaf_count < 1 or not 1 <= s <= MAX_S:
        raise ValueError(f"a challenge needs at least one leaf and 1..{MAX_S} samples (got {leaf_count}, {s})")
    seed = hashlib.sha256(b"".join((beacon, auditor, piece_root, nonce))).digest()
    want, picked, counter = min(s, leaf_count), [], 0
    while len(picked) < want:
        draw = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
        index = int.from_bytes(draw[:8], "big") % leaf_count   # bias below 2^-40 for any piece size
        if index not in picked:
            picked.append(index)
    return picked


@dataclass(frozen=True)
class Proof:
    """A holder's answer: the leaves asked, their Merkle paths, signed with its node key over the nonce."""
    piece_root: bytes
    nonce: bytes
    indices: tuple
    leaves: tuple
    paths: tuple
    signature: bytes = b""


def _signed_body(p: Proof) -> bytes:
    return PROOF_DOMAIN + cbor.dumps({"root": p.piece_root, "nonce": p.nonce, "indices": list(p.indices),
                                      "leaves": list(p.leaves), "paths": [list(x) for x in p.paths]})


def answer(identity, read_block, subtree_roots, size: int, piece_root: bytes, nonce: bytes,
           indices) -> Proof:
    """The holder's signed proof for the challenged indices, reading one 16 KiB block per index.

    merkle.ProofError when its copy is damaged (the holder reports the piece lost rather than fail quietly)."""
    leaves, paths = [], []
    for i in indices:
        leaf, path = merkle.prove(read_block, subtree_roots, size, i)
        leaves.append(leaf)
        paths.append(tuple(path))
    unsigned = Proof(piece_root, nonce, tuple(indices), tuple(leaves), tuple(paths))
    return Proof(piece_root, nonce, unsigned.indices, unsigned.leaves, unsigned.paths,
                 identity.sign(_signed_body(unsigned)))


@dataclass(frozen=True)
class Verdict:
    """An audit's outcome: true when it passed; `reason` says why it failed, for the log and the record."""
    ok: bool
    reason: str = ""

    def __bool__(self):
        return self.ok


def check(root: bytes, size: int, indices, proof: Proof, holder_public_key: bytes, *, nonce: bytes) -> Verdict:
    """The auditor's check of a proof: the right challenge, every index answered, every leaf on the root, the
    holder's signature. Needs only the piece's 32-byte root and size."""
    if proof.piece_root != root:
        return Verdict(False, "the proof is for another piece")
    if proof.nonce != nonce:
        return Verdict(False, "the proof answers an earlier challenge (nonce mismatch): a replay")
    want = list(indices)
    got = list(proof.indices)
    if got != want or len(proof.leaves) != len(want) or len(proof.paths) != len(want):
        answered = sum(1 for i in want if i in got)
        return Verdict(False, f"the proof answers {answered} of the {len(want)} challenged leaves")
    if not verify_signature(node_id_of(holder_public_key), _signed_body(proof), proof.signature):
        return Verdict(False, "the proof is not signed by the holder")
    for i, leaf, path in zip(want, proof.leaves, proof.paths):
        if not merkle.verify(root, size, i, leaf, list(path)):
            return Verdict(False, f"leaf {i} does not verify against the piece root")
    return Verdict(True)


def serialize_proof(p: Proof) -> bytes:
    """The proof in canonical DAG-CBOR (what travels; the wire message wraps it)."""
    return cbor.dumps({"root": p.piece_root, "nonce": p.nonce, "indices": list(p.indices), "leaves": list(p.leaves),
                       "paths": [list(x) for x in p.paths], "sig": p.signature})


def parse_proof(raw: bytes) -> Proof:
    """A proof from outside, bounded in every dimension; DecodeError saying what is wrong."""
    if len(raw) > MAX_PROOF:
        raise DecodeError(f"an audit proof is at most {MAX_PROOF} bytes, this one is {len(raw)}")
    value = cbor.loads(raw)
    if not isinstance(value, dict) or set(value) != {"root", "nonce", "indices", "leaves", "paths", "sig"}:
        raise DecodeError("an audit proof is a map of root, nonce, indices, leaves, paths and sig")
    root, nonce, indices, leaves, paths, sig = (value[k] for k in ("root", "nonce", "indices", "leaves", "paths",
                                                                   "sig"))
    if not (isinstance(root, bytes) and len(root) == merkle.HASH and isinstance(nonce, bytes) and len(nonce) == NONCE
            and isinstance(sig, bytes) and len(sig) == 64):
        raise DecodeError("an audit proof's root is 32 bytes, its nonce 16 and its signature 64")
    if not (isinstance(indices, list) and isinstance(leaves, list) and isinstance(paths, list)
            and len(indices) <= MAX_S and len(leaves) == len(indices) == len(paths)):
        raise DecodeError(f"an audit proof carries at most {MAX_S} leaves, one index and one path each")
    if not all(isinstance(i, int) and i >= 0 for i in indices):
        raise DecodeError("an audit proof's indices are non-negative integers")
    if not all(isinstance(leaf, bytes) and len(leaf) <= merkle.LEAF for leaf in leaves):
        raise DecodeError(f"an audit proof's leaves are at most {merkle.LEAF} bytes")
    for path in paths:
        if not (isinstance(path, list) and len(path) <= MAX_PATH
                and all(isinstance(h, bytes) and len(h) == merkle.HASH for h in path)):
            raise DecodeError(f"an audit proof's paths are at most {MAX_PATH} hashes of 32 bytes")
    return Proof(root, nonce, tuple(indices), tuple(leaves), tuple(tuple(p) for p in paths), sig)
