"""The holder's piece store: pieces verified on receipt, within the share, crash-safe, leased, released."""

import os
import random

import pytest

from edge.identity import Identity
from edge.ipld.cid import CID
from edge.protect import audit, merkle
from edge.store.pieces import DIR, LEASE_MAX, PieceError, PieceFull, PieceNotFound, PieceStore, PieceTaken

PIN = CID.for_block(b"a pinned file")
OWNER = "hn" + "a" * 52
OTHER = "hn" + "b" * 52
SECRET = bytes(range(32))


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def piece(n, seed=1):
    return random.Random(seed).randbytes(n)


def send(store, data, *, chunk=64 * 1024, owner=OWNER, sender=None, root=None, lease=None, index=0):
    root = merkle.build(data).root if root is None else root
    lease = store.clock() + 86400 if lease is None else lease
    have = 0
    for off in range(0, len(data), chunk):
        have = store.receive(sender or owner, owner, PIN, 0, index, root, len(data), lease, off,
                             data[off:off + chunk])
    return root, have


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = PieceStore(str(tmp_path), 1 << 20, clock=clock)
    yield s
    s.close()


def test_a_piece_arrives_in_chunks_is_verified_and_served(store):
    data = piece(100_000)
    root, have = send(store, data, chunk=30_000)
    assert have == len(data)
    assert store.read(root, 0, 1 << 20) == (data, len(data))
    assert store.read(root, 99_000, 5000) == (data[99_000:], len(data))
    held = store.held(root)
    assert held.size == len(data) and held.owner == OWNER and held.pin == str(PIN)
    assert list(held.subtrees) == merkle.build(data).subtree_roots
    assert store.stat() == {"pieces": 1, "bytes": len(data), "share": 1 << 20, "arriving": 0, "manifests": 0}


def test_a_wrong_root_keeps_nothing(store, tmp_path):
    data = piece(40_000)
    with pytest.raises(PieceError, match="do not hash to its root"):
        send(store, data, root=bytes(32))
    assert store.pieces() == [] and store.used() == 0
    assert sorted(os.listdir(tmp_path / DIR)) == sorted(n for n in os.listdir(tmp_path / DIR) if "sqlite" in n)


def test_a_truncated_piece_is_never_kept(store, clock):
    data = piece(50_000)
    root = merkle.build(data).root
    assert store.receive(OWNER, OWNER, PIN, 0, 0, root, len(data), clock() + 100, 0, data[:20_000]) == 20_000
    assert store.held(root) is None
    with pytest.raises(PieceNotFound):
        store.read(root, 0, 10)
    with pytest.raises(PieceError, match="expected 20000: send the chunks in order"):
        store.receive(OWNER, OWNER, PIN, 0, 0, root, len(data), clock() + 100, 30_000, data[30_000:])
    clock.t += 301   # the upload is dropped once idle, and its space freed
    other = piece(10, seed=2)
    send(store, other)
    assert store.stat()["arriving"] == 0


def test_full_beyond_the_share(store):
    send(store, piece(700_000))
    with pytest.raises(PieceFull, match="does not fit"):
        send(store, piece(400_000, seed=2))
    send(store, piece(300_000, seed=3))
    assert store.used() == 1_000_000


def test_an_expired_lease_frees_the_space(store, clock):
    with pytest.raises(PieceError, match="already expired"):
        send(store, piece(10), lease=clock() - 1)
    root, _ = send(store, piece(600_000), lease=clock() + 3600)
    clock.t += 1800
    assert store.renew(OWNER, [root, bytes(32)], clock() + 3600) == [True, False]
    assert store.renew(OTHER, [root], clock() + 10 * 86400) == [False]   # only the owner renews
    clock.t += 3599
    assert store.expire() == 0
    clock.t += 2
    assert store.expire() == 1
    assert store.held(root) is None and store.used() == 0


def test_a_lease_is_at_most_thirty_days(store, clock):
    root, _ = send(store, piece(100), lease=clock() + 365 * 86400)
    assert store.held(root).lease == clock() + LEASE_MAX
    send(store, piece(400_000, seed=5), lease=clock() + 40 * 86400)
    with pytest.raises(PieceFull):   # the pieces held make no room while their leases run...
        send(store, piece(900_000, seed=4), lease=clock() + 10)
    clock.t += LEASE_MAX + 1
    root2, _ = send(store, piece(900_000, seed=4), lease=clock() + 10)   # ...and do once passed: freed first
    assert store.held(root) is None and store.held(root2) is not None


def test_the_same_piece_for_another_owner_is_refused(store):
    data = piece(5000)
    root, _ = send(store, data)
    assert send(store, data)[1] == len(data)   # the same owner again: kept once, its lease renewed
    with pytest.raises(PieceTaken, match="for another owner"):
        send(store, data, owner=OTHER)
    assert store.held(root).owner == OWNER and store.used() == len(data)


def test_release_frees_only_the_owners_pieces(store):
    mine, _ = send(store, piece(1000))
    theirs, _ = send(store, piece(1000, seed=2), owner=OTHER)
    assert store.release(OWNER, [mine, theirs]) == [True, False]
    assert store.held(mine) is None and store.held(theirs) is not None


def test_manifests_are_kept_only_beside_a_piece(store):
    with pytest.raises(PieceNotFound):
        store.keep_manifest(OWNER, PIN, b"signed")
    root, _ = send(store, piece(1000))
    store.keep_manifest(OWNER, PIN, b"signed")
    assert store.manifest(PIN) == b"signed"
    assert store.used() == 1000 + 6   # manifests count against the share
    with pytest.raises(PieceFull, match="manifest of 1048576 bytes does not fit"):
        store.keep_manifest(OWNER, PIN, bytes(1 << 20))
    store.release(OWNER, [root])
    assert store.manifest(PIN) is None and store.used() == 0


def test_one_sender_cannot_hold_every_upload_slot(store, clock):
    for i in range(8):
        data = piece(100, seed=i)
        store.receive(OTHER, OTHER, PIN, 0, i, merkle.build(data).root, 100, clock() + 100, 0, data[:50])
    with pytest.raises(PieceFull, match="8 pieces from you"):
        send(store, piece(100, seed=99), owner=OTHER)
    send(store, piece(100, seed=99))   # another sender is still served


def test_audit_proofs_check_against_the_root(store):
    data = piece(200_000)
    root, _ = send(store, data)
    holder, auditor = Identity.generate(), Identity.generate()
    beacon, nonce = audit.open_beacon(SECRET, audit.commitment(SECRET)), audit.new_nonce()
    proof = store.audit(holder, root, nonce, beacon, auditor.public_key)
    indices = audit.challenge(beacon, auditor.public_key, root, nonce, merkle.leaf_count(len(data)))
    assert audit.check(root, len(data), indices, audit.parse_proof(audit.serialize_proof(proof)), holder.public_key,
                       nonce=nonce)
    with pytest.raises(PieceNotFound):
        store.audit(holder, bytes(32), nonce, beacon, auditor.public_key)


def test_a_damaged_piece_cannot_be_proved(store, tmp_path):
    data = piece(16 * 1024)   # one 16 KiB block: every challenge reads the damaged one
    root, _ = send(store, data)
    path = tmp_path / DIR / (root.hex() + ".piece")
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 1
    path.write_bytes(bytes(raw))
    beacon = audit.open_beacon(SECRET, audit.commitment(SECRET))
    with pytest.raises(merkle.ProofError, match="damaged"):
        store.audit(Identity.generate(), root, audit.new_nonce(), beacon, bytes(32))


def test_after_a_crash_a_piece_is_whole_or_absent(tmp_path, clock):
    """What a power cut can leave: a temporary file half written, a piece renamed but not listed, a listed piece
    whose file is gone. At start only whole, listed pieces remain."""
    store = PieceStore(str(tmp_path), 1 << 20, clock=clock)
    data = piece(30_000)
    root, _ = send(store, data)
    gone, _ = send(store, piece(2000, seed=9))
    half = piece(10_000, seed=3)
    store.receive(OWNER, OWNER, PIN, 0, 0, merkle.build(half).root, len(half), clock() + 10, 0, half[:5000])
    store._db.close()   # the process dies: nothing more is written
    d = tmp_path / DIR
    (d / (bytes(range(32)).hex() + ".piece")).write_bytes(b"renamed but never listed")
    os.unlink(d / (gone.hex() + ".piece"))
    again = PieceStore(str(tmp_path), 1 << 20, clock=clock)
    try:
        assert [h.root for h in again.pieces()] == [root]
        assert again.read(root, 0, 1 << 20)[0] == data
        assert sorted(n for n in os.listdir(d) if "sqlite" not in n) == [root.hex() + ".piece"]
        assert again.used() == len(data)
    finally:
        again.close()


def test_a_custodian_the_owners_manifest_names_renews_its_pieces_a_forger_does_not(store, clock):
    """With the owner gone, a holder its signed manifest names (the repairer) may renew the owner's pieces here;
    a node the verified chain does not name may not, whatever manifest it signs and hands over."""
    from edge.protect import manifest as manifests
    owner, holder, newcomer, forger = (Identity.generate() for _ in range(4))
    data = piece(4096)
    root, _ = send(store, data, owner=owner.node_id, lease=clock() + 3600)
    roots = [root] + [bytes([i]) * 32 for i in range(1, 4)]
    me = Identity.generate().node_id   # this holder
    entry = (8192, [PIN], roots, [me, holder.node_id, Identity.generate().node_id, Identity.generate().node_id])
    base = manifests.sign(manifests.make(PIN, 2, 2, [entry], owner.node_id, 1), owner)
    store.keep_manifest(owner.node_id, PIN, manifests.serialize(base))   # the owner left it with its piece
    later = clock() + 20 * 86400
    assert store.renew(forger.node_id, [root], later) == [False]
    # a forger signing the owner's next version (itself a holder) is not in the chain: refused, and no renewal
    usurped = manifests.sign(manifests.with_holders(base, {(0, 1): forger.node_id}, 2), forger)
    with pytest.raises(PieceNotFound, match="does not extend"):
        store.keep_manifest(forger.node_id, PIN, manifests.serialize(usurped))
    # nor a pin of its own under the same root CID, with a piece of its own placed here to park it beside
    send(store, piece(100, seed=8), owner=forger.node_id, index=1)
    own = manifests.sign(manifests.make(PIN, 2, 2, [(entry[0], [PIN], roots, [forger.node_id] * 4)],
                                        forger.node_id, 9), forger)
    store.keep_manifest(forger.node_id, PIN, manifests.serialize(own))   # its own lease: kept, unchecked
    assert store.renew(forger.node_id, [root], later) == [False]
    assert store.held(root).lease == clock() + 3600
    # the holder the owner named renews; a repair it signs (only holders changed) lets the new holder renew too
    assert store.renew(holder.node_id, [root, bytes(32)], later) == [True, False]
    assert store.held(root).lease == later
    moved = manifests.sign(manifests.with_holders(base, {(0, 2): newcomer.node_id}, 2), holder)
    assert store.renew(newcomer.node_id, [root], later + 1) == [False]
    store.keep_manifest(holder.node_id, PIN, manifests.serialize(moved))
    assert store.renew(newcomer.node_id, [root], later + 1) == [True] and store.held(root).lease == later + 1
    # once the piece is gone, so are the custodians' manifests
    store.release(owner.node_id, [root])
    store.release(forger.node_id, [r.root for r in store.pieces()])
    assert store.manifest(PIN) is None and store.used() == 0


def test_pieces_a_repairer_placed_are_renewed_by_the_next_one_once_it_hands_over_the_owners_manifest(store, clock):
    """A piece the first repairer placed here is under its lease, beside its signed update. When it is gone too,
    the next chosen holder renews it: first refused (no owner's manifest here to verify the chain from), then
    accepted once it hands that manifest over."""
    from edge.protect import manifest as manifests
    owner, first, second = (Identity.generate() for _ in range(3))
    me = Identity.generate().node_id
    data = piece(4096, seed=6)
    root, _ = send(store, data, owner=first.node_id, lease=clock() + 3600)
    roots = [bytes([i]) * 32 for i in range(1, 4)] + [root]
    lost = Identity.generate().node_id
    entry = (8192, [PIN], roots, [first.node_id, second.node_id, Identity.generate().node_id, lost])
    base = manifests.sign(manifests.make(PIN, 2, 2, [entry], owner.node_id, 1), owner)
    repaired = manifests.sign(manifests.with_holders(base, {(0, 3): me}, 2), first)
    store.keep_manifest(first.node_id, PIN, manifests.serialize(repaired))   # the first repairer's, with its piece
    assert store.renew(second.node_id, [root], clock() + 86400) == [False]
    with pytest.raises(PieceNotFound, match="does not extend"):   # its own update cannot come before the owner's
        store.keep_manifest(second.node_id, PIN, manifests.serialize(
            manifests.sign(manifests.with_holders(repaired, {(0, 2): second.node_id}, 3), second)))
    store.keep_manifest(second.node_id, PIN, manifests.serialize(base))
    assert store.renew(second.node_id, [root], clock() + 86400) == [True]
    assert store.held(root).lease == clock() + 86400
