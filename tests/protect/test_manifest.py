"""The manifest: signed, canonical and bounded; a newer version supersedes; a repairer may change only holders;
the k+m defaults and the refusal of an explicit K+M that breaks the rule."""

import os

import pytest
from hypothesis import given, strategies as st

from edge.errors import DecodeError
from edge.identity import Identity
from edge.ipld.cid import CID
from edge.protect import manifest
from edge.protect.manifest import ProtectError

OWNER = Identity.from_seed(b"o" * 32)
REPAIRER = Identity.from_seed(b"r" * 32)
HOLDERS = [Identity.from_seed(bytes([i]) * 32).node_id for i in range(10)]


def _manifest(k=4, m=4, segs=3):
    cids = [[CID.for_block(os.urandom(8)) for _ in range(5)] for _ in range(segs)]
    return manifest.make(CID.for_block(b"root"), k, m,
                         [(1000 + s, cids[s], [os.urandom(32) for _ in range(k + m)],
                           [HOLDERS[(s + p) % 10] for p in range(k + m)]) for s in range(segs)],
                         OWNER.node_id, created=1_700_000_000), cids


def test_round_trip_and_signature():
    man, cids = _manifest()
    signed = manifest.sign(man, OWNER)
    raw = manifest.serialize(signed)
    back = manifest.parse(raw)
    assert back == signed and back.signer == OWNER.node_id
    from edge.ipld import cbor
    reference = manifest._value(signed)
    reference["sig"] = signed.signature
    assert raw == cbor.dumps(reference)          # the fast writer is the general DAG-CBOR encoding
    assert back.holder_of(1, 0) == HOLDERS[1] and back.piece_size(0) == 250
    assert back.segment_of(cids[2][3]) == [2] and back.segment_of(CID.for_block(b"elsewhere")) == []
    tampered = bytearray(raw)
    tampered[raw.index(signed.segments[0].roots[0]) + 3] ^= 1
    with pytest.raises(DecodeError, match="not signed"):
        manifest.parse(bytes(tampered))
    print(f"\nmanifest of 3 segments at 4+4: {len(raw)} bytes")


def test_versions_and_repairers():
    man, _ = _manifest()
    v1 = manifest.sign(man, OWNER)
    assert manifest.check_update(None, v1) == ""
    moved = manifest.with_holders(v1, {(0, 3): HOLDERS[9]}, created=1_700_000_100)
    assert moved.version == 2 and moved.holder_of(0, 3) == HOLDERS[9]
    by_repairer = manifest.parse(manifest.serialize(manifest.sign(moved, REPAIRER)))
    assert manifest.check_update(v1, by_repairer, repairers=[REPAIRER.node_id]) == ""
    assert "neither" in manifest.check_update(v1, by_repairer)
    assert "supersede" in manifest.check_update(by_repairer, v1, repairers=[REPAIRER.node_id])
    assert "first" in manifest.check_update(None, by_repairer)
    from dataclasses import replace
    changed = manifest.sign(replace(moved, k=2, m=6), REPAIRER)
    assert "only the holders" in manifest.check_update(v1, changed, repairers=[REPAIRER.node_id])
    assert manifest.check_update(v1, manifest.sign(replace(moved, k=2, m=6), OWNER)) == ""


def test_parse_refuses_non_canonical_and_out_of_bounds():
    man = manifest.sign(_manifest(segs=1)[0], OWNER)
    raw = manifest.serialize(man)
    with pytest.raises(DecodeError):
        manifest.parse(raw + b"\0")
    from edge.ipld import cbor
    value = cbor.loads(raw)
    value["segments"][0]["at"] = [99] * 8
    with pytest.raises(DecodeError, match="holders"):
        manifest.parse(cbor.dumps(value))
    value = cbor.loads(raw)
    value["k"] = 300
    with pytest.raises(DecodeError, match="k\\+m"):
        manifest.parse(cbor.dumps(value))


@given(st.binary(max_size=600))
def test_parse_never_crashes(raw):
    try:
        manifest.parse(raw)
    except DecodeError:
        pass


def test_defaults():
    expect = {2: (1, 0), 3: (1, 1), 4: (1, 1), 5: (2, 2), 9: (2, 2), 10: (4, 4), 16: (4, 4), 17: (8, 6), 100: (8, 6)}
    for n, km in expect.items():
        assert manifest.defaults(n) == km
        assert sum(km) <= n - 1
    with pytest.raises(ProtectError, match="has 1"):
        manifest.defaults(1)


def test_parse_protect():
    assert manifest.parse_protect("auto", 11) == (4, 4)
    assert manifest.parse_protect(" 2+2 ", 7) == (2, 2)
    assert manifest.parse_protect("1+2", 4) == (1, 2)
    with pytest.raises(ProtectError) as err:
        manifest.parse_protect("4+4", 8)
    assert str(err.value) == ("--protect 4+4: k+m = 8 pieces need k+m+1 = 9 eligible neighbours (one spare for "
                              "repair), this neighbourhood has 8; use at most 7 pieces, or auto (2+2)")
    for bad in ("4", "a+b", "0+3", "200+100", "-1+2"):
        with pytest.raises(ProtectError):
            manifest.parse_protect(bad, 1000)
