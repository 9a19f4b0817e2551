"""Piece messages (protected pins): round trips, bounds that say why, and fuzzed or mutated frames that must give
DecodeError only."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.wire import (MAX_PIECE, MAX_PIECE_CHUNK, Audit, AuditProof, ErrorCode, GetManifest, GetPiece, LeaseOk,
                       Manifest, Piece, ReleasePiece, RenewLease, StoreOk, StorePiece, Transfer, TransferReceipt,
                       parse_message, serialize_message)
from edge.wire.messages import MAX_MANIFEST, MAX_ORDER, Moved, ReadQuery, ReadSeen, Repaired, RepairPiece
from tests.ipld.test_formats import clean, mutations

C = CID.for_block(b"hello world")
R = bytes(range(32))
NODE = "hn" + "a" * 52
N = b"n" * 16
SAMPLES = [StorePiece(1, C, 3, 7, R, 5000, 1_900_000_000, 1024, b"x" * 2000),
           StorePiece(2, C, 0, 0, R, 1, 0, 0, b"y"), StoreOk(1, 3024), GetPiece(3, R, 1024, 4096), GetPiece(4, R),
           Piece(3, R, 1024, 5000, b"z" * 100), Audit(5, R, b"n" * 16, b"s" * 32, b"c" * 32),
           AuditProof(5, b"a signed proof"),
           Transfer(6, C, 2, 1, R, 4, 7, NODE, 0, b"abcd"), TransferReceipt(6, R, b"s" * 64),
           RenewLease(7, (R, R[::-1]), 1_900_000_000), ReleasePiece(8, (R,)), LeaseOk(7, (True, False, True)),
           GetManifest(9, C), Manifest(9, C, b"signed manifest"), Moved(10, C, 4, 2, R, NODE, b"r" * 64),
           GetPiece(11, R, 0, 4096, b"a signed order"),
           RepairPiece(12, C, 3, 1, b"a signed order", ((NODE, "tcp://10.0.0.2:4001"), (NODE, "tcp://h:1")),
                       b"signed manifest"),
           Repaired(12, R, 6 << 20, b"s" * 64),
           ReadQuery(13, (R, R[::-1]), ((1, 2, 3, 4), (190,)), ((5200, 40), (3_600_000, 0))),
           ReadSeen(13, (False, True))]
RQ = ReadQuery(1, (R,), ((1,),), ((10, 0),))
RP = RepairPiece(1, C, 0, 0, b"o", ((NODE, "tcp://h:1"),), b"m")


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    frames = serialize_message(msg)
    assert len(frames[1]) < 64 * 1024
    assert parse_message(frames) == msg


def test_full_is_an_error_code():
    assert ErrorCode(9) is ErrorCode.FULL


def _body(msg, **change):
    frames = serialize_message(msg)
    body = cbor.loads(frames[1])
    body.update(change)
    return [frames[0], cbor.dumps(body), *frames[2:]]


@pytest.mark.parametrize("frames, words", [
    (serialize_message(StorePiece(1, C, 0, 0, R, 10, 0, 8, b"abc")), "runs past the piece's 10 bytes"),
    (serialize_message(StorePiece(1, C, 0, 0, R, MAX_PIECE, 0, 0, b"x" * (MAX_PIECE_CHUNK + 1))),
     "over the 1048576-byte limit"),
    (_body(StorePiece(1, C, 0, 0, R, 10, 0, 0, b"a"), size=MAX_PIECE + 1), "'size' = 16777217 is out of range"),
    (_body(StorePiece(1, C, 0, 0, R, 10, 0, 0, b"a"), size=0), "at least one byte"),
    (_body(StorePiece(1, C, 0, 0, R, 10, 0, 0, b"a"), root=R[:31]), "'root' must be 32 bytes, not 31"),
    (_body(StorePiece(1, C, 0, 0, R, 10, 0, 0, b"a"), index=256), "'index' = 256 is out of range"),
    (_body(Transfer(1, C, 0, 0, R, 10, 0, NODE, 0, b"a"), owner="hnx"), "owner: 'hnx' is not a node id"),
    (_body(GetPiece(1, R), length=MAX_PIECE_CHUNK + 1), "'length' = 1048577 is out of range"),
    (serialize_message(Piece(1, R, 4, 5, b"ab")), "runs past"),
    (_body(Audit(1, R, N, R, R), nonce=b"n" * 17), "'nonce' must be 16 bytes, not 17"),
    (_body(Audit(1, R, N, R, R), secret=b""), "'secret' must be 32 bytes"),
    (_body(Audit(1, R, N, R, R), commit=R + b"x"), "'commit' must be 32 bytes"),
    (_body(AuditProof(1, b"p"), proof=b"p" * (60 * 1024 + 1)), "a proof is 1 to 61440 bytes"),
    (_body(AuditProof(1, b"p"), proof=b""), "not 0"),
    (_body(RenewLease(1, (R,), 0), roots=[R] * 1025), "1025 piece roots; 1 to 1024"),
    (_body(RenewLease(1, (R,), 0), roots=[]), "0 piece roots"),
    (_body(ReleasePiece(1, (R,)), roots=[b"short"]), "must be 32 bytes"),
    (_body(LeaseOk(1, (True,)), n=9), "1 bitmap bytes for 9 answers"),
    (serialize_message(Manifest(1, C, b"")), "1 to 2097152 bytes"),
    (_body(Moved(1, C, 0, 0, R, NODE, b"r" * 64), to="hnx"), "to: 'hnx' is not a node id"),
    (_body(Moved(1, C, 0, 0, R, NODE, b"r" * 64), sig=b"r" * 63), "'sig' must be 64 bytes, not 63"),
    (_body(Moved(1, C, 0, 0, R, NODE, b"r" * 64), index=256), "'index' = 256 is out of range"),
    (serialize_message(Manifest(1, C, b"m" * (MAX_MANIFEST + 1))), "not 2097153"),
    (_body(GetPiece(1, R, 0, 10, b"o"), order=b"o" * (MAX_ORDER + 1)), "a repair order is 0 to 512 bytes"),
    (_body(RP, order=b""), "a repair order is 1 to 512 bytes, not 0"),
    (_body(RP, sources=[]), "0 sources; 1 to 256"),
    (_body(RP, sources=[[NODE, "e"]] * 257), "257 sources"),
    (_body(RP, sources=[[NODE]]), "a source is"),
    (_body(RP, sources=[[NODE, "e" * 257]]), "a source is"),
    (_body(RP, sources=[["hnx", "e"]]), "source: 'hnx' is not a node id"),
    (_body(RP, index=256), "'index' = 256 is out of range"),
    (serialize_message(RepairPiece(1, C, 0, 0, b"o", ((NODE, "e"),), b"")), "a manifest of 1 to 2097152"),
    (_body(Repaired(1, R, 0, b"s" * 64), sig=b"s"), "'sig' must be 64 bytes, not 1"),
    (_body(RQ, blocks=[]), "blocks lists 1 to 16 block numbers for each root"),
    (_body(RQ, blocks=[list(range(17))]), "blocks lists 1 to 16"),
    (_body(RQ, blocks=[[-1]]), "blocks lists"),
    (_body(RQ, windows=[[0, 10]]), "windows gives"),
    (_body(RQ, windows=[[3_600_001, 0]]), "windows gives"),
    (_body(RQ, windows=[]), "windows gives"),
    (_body(RQ, roots=[R] * 1025), "1025 piece roots"),
    (_body(ReadSeen(1, (True,)), n=9), "1 bitmap bytes for 9 answers"),
    ([b"HE\x01\x20", cbor.dumps({"id": 1})], "missing payload"),
    ([b"HE\x01\x21", cbor.dumps({"id": 1, "have": 0}), b"x"], "unexpected payload"),
])
def test_bad_piece_messages_say_why(frames, words):
    with pytest.raises(DecodeError, match=words):
        parse_message(frames)


def test_a_chunk_is_bounded_by_the_frame_limit_too():
    frames = serialize_message(StorePiece(1, C, 0, 0, R, 5000, 0, 0, b"x" * 2000))
    with pytest.raises(DecodeError, match="over the 1000-byte limit"):
        parse_message(frames, max_payload=1000)


@given(st.sampled_from(SAMPLES).flatmap(lambda m: st.tuples(
    st.just(serialize_message(m)), mutations(serialize_message(m)[1]))))
@settings(max_examples=800)
def test_mutated_bodies(args):
    frames, body = args
    clean(parse_message, [frames[0], body, *frames[2:]])


@given(st.integers(0x20, 0x31), st.lists(st.binary(max_size=80), min_size=1, max_size=2))
@settings(max_examples=300)
def test_random_bodies_of_piece_types(kind, rest):
    clean(parse_message, [b"HE\x01" + bytes([kind]), *rest])
