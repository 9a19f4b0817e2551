"""Wire messages: golden bytes, round trips, and fuzzed or mutated frames that must give DecodeError only."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.ipld.cid import CID
import struct

from edge.wire import (MAX_GET_MANY, MAX_PROBE, Block, Blocks, Error, ErrorCode, Get, GetMany, Have, HaveReply,
                       Hello, ListStreams, Probe, ProbeData, Put, PutOk, Streams, Welcome, parse_message,
                       serialize_message)
from tests.ipld.test_formats import clean, mutations

C = CID.for_block(b"hello world")
NODE = "hn" + "a" * 52
SAMPLES = [Hello(NODE, caps=("store", "relay"), cert=b"c" * 10), Welcome(NODE, 1, ("store",)), Have(7, (C, C)),
           Welcome(NODE, 1, ("store",), free=123_456_789), Hello(NODE, free=0),
           HaveReply(7, (True, False, True)), Get(8, C, 5, 100), Get(9, C), Block(8, C, 5, 11, b"world"),
           Put(10, C, b"hello world"), PutOk(10, True), Probe(12, 65536), ProbeData(12, b"\0" * 100),
           GetMany(13, (C, CID.for_block(b"x"), C)), Blocks((13, 15), (5, 6), b"helloworld!"),
           Error(11, ErrorCode.NOT_FOUND, "no such block"), ListStreams(14), ListStreams(15, 3, "film"),
           Streams(14, (b"\xa1\x61t\x66stream", b"x" * 100), 7), Streams(16, (), 0)]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert parse_message(serialize_message(msg)) == msg


def test_golden_get():
    frames = serialize_message(Get(1, C))
    assert frames[0] == b"HE\x01\x05"
    # {"id": 1, "cid": h'0155…', "offset": 0} in DAG-CBOR key order (length first)
    assert frames[1] == b"\xa3" + b"\x62id\x01" + b"\x63cid\x58\x24" + bytes(C) + b"\x66offset\x00"


@pytest.mark.parametrize("frames, words", [
    ([b"XX\x01\x05", b"\xa0"], "bad header"),
    ([b"HE\x09\x05", b"\xa0"], "version 9"),
    ([b"HE\x01\x63", b"\xa0"], "unknown message type"),
    ([b"HE\x01\x05", b"\xa0"], "'id' is missing"),
    ([b"HE\x01\x07", b"\xa0"], "missing payload"),
    ([b"HE\x01\x05", b"\xa0", b"x"], "unexpected payload"),
    ([b"HE\x01\x05"], "2 or 3 frames"),
    ([b"HE\x01\x05", b"\x00" * (65 * 1024)], "over the"),
])
def test_bad_frames_say_why(frames, words):
    with pytest.raises(DecodeError, match=words):
        parse_message(frames)


def test_free_space_in_hello_and_welcome_is_a_bounded_number():
    """Free disk travels in the handshake (issue 20 finding 21: it was in the mDNS TXT, read by anyone)."""
    assert parse_message(serialize_message(Welcome(NODE, 1))).free is None      # optional: older nodes omit it
    for free in (-1, 1 << 63, True, "5"):
        body = cbor.dumps({"node": NODE, "version": 1, "caps": [], "free": free})
        with pytest.raises(DecodeError, match="'free'"):
            parse_message([b"HE\x01\x02", body])


def test_a_probe_asks_for_at_most_max_probe_bytes():
    assert parse_message(serialize_message(Probe(1, MAX_PROBE))) == Probe(1, MAX_PROBE)
    with pytest.raises(DecodeError, match="'size' = 262145 is out of range"):
        parse_message(serialize_message(Probe(1, MAX_PROBE + 1)))
    with pytest.raises(DecodeError, match="ProbeData: payload of 262145 bytes is over"):
        parse_message(serialize_message(ProbeData(1, b"\0" * (MAX_PROBE + 1))))


def test_oversized_payload_and_too_many_cids():
    with pytest.raises(DecodeError, match="over the 1000-byte limit"):
        parse_message(serialize_message(Put(1, C, b"x" * 1001)), max_payload=1000)
    with pytest.raises(DecodeError, match="over the limit"):
        parse_message(serialize_message(Have(1, (C,) * 1025)))


@given(st.sampled_from(SAMPLES).flatmap(lambda m: st.tuples(
    st.just(serialize_message(m)), st.integers(0, 2), mutations(serialize_message(m)[1]))))
@settings(max_examples=500)
def test_mutated_bodies(args):
    frames, _, body = args
    clean(parse_message, [frames[0], body, *frames[2:]])


@given(st.lists(st.binary(max_size=80), min_size=0, max_size=4))
def test_random_frames(frames):
    clean(parse_message, frames)


# Get and Block are written and read by fast paths; they must agree byte for byte with the general DAG-CBOR
# encoder, and accept or refuse exactly what the general reader does.

UINTS = st.one_of(st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1]),
                  st.integers(0, 2**63 - 1))
CIDS = st.one_of(st.binary(max_size=64).map(CID.for_block),
                 st.binary(max_size=64).map(lambda b: CID.for_block(b, 0x70)),
                 st.binary(max_size=64).map(lambda b: CID(0, 0x70, CID.for_block(b).multihash)))


def _general(frames):
    """parse_message with the fast readers switched off."""
    from unittest import mock

    from edge.wire import codec
    with mock.patch.object(codec, "read_get", side_effect=codec.NotCanonical), \
            mock.patch.object(codec, "read_block_fields", side_effect=codec.NotCanonical), \
            mock.patch.object(codec, "read_get_many", side_effect=codec.NotCanonical), \
            mock.patch.object(codec, "read_blocks", side_effect=codec.NotCanonical):
        return parse_message(frames)


@given(UINTS, CIDS, UINTS, st.one_of(st.none(), UINTS))
@settings(max_examples=300)
def test_fast_get_is_the_general_encoding(rid, cid, offset, length):
    msg = Get(rid, cid, offset, length)
    body = {"id": rid, "cid": bytes(cid), "offset": offset, **({} if length is None else {"length": length})}
    frames = serialize_message(msg)
    assert frames[1] == cbor.dumps(body)
    assert parse_message(frames) == _general(frames) == msg


@given(UINTS, CIDS, st.integers(0, 2**62), st.binary(max_size=40))
@settings(max_examples=300)
def test_fast_block_is_the_general_encoding(rid, cid, offset, data):
    msg = Block(rid, cid, offset, offset + len(data) + 3, data)
    frames = serialize_message(msg)
    assert frames[1] == cbor.dumps({"id": rid, "cid": bytes(cid), "offset": offset, "total": msg.total})
    assert parse_message(frames) == _general(frames) == msg


def _outcome(fn, frames):
    try:
        return fn(frames)
    except DecodeError:
        return DecodeError


@given(st.integers(0, 2**63 - MAX_GET_MANY), st.lists(CIDS, min_size=1, max_size=MAX_GET_MANY))
@settings(max_examples=200)
def test_fast_get_many_is_the_general_encoding(rid, cids):
    msg = GetMany(rid, tuple(cids))
    frames = serialize_message(msg)
    assert frames[1] == cbor.dumps({"id": rid, "cids": [bytes(c) for c in cids]})
    assert parse_message(frames) == _general(frames) == msg
    assert [g.id for g in msg.gets()] == list(range(rid, rid + len(cids)))


@given(st.lists(st.tuples(UINTS, st.binary(max_size=40)), min_size=1, max_size=MAX_GET_MANY))
@settings(max_examples=200)
def test_fast_blocks_is_the_general_encoding(entries):
    ids, datas = zip(*entries)
    msg = Blocks(ids, tuple(map(len, datas)), b"".join(datas))
    frames = serialize_message(msg)
    n = len(ids)
    assert frames[1] == cbor.dumps({"ids": struct.pack(f">{n}Q", *ids), "sizes": struct.pack(f">{n}L", *msg.sizes)})
    assert parse_message(frames) == _general(frames) == msg
    assert list(msg.parts()) == list(zip(ids, datas))


@pytest.mark.parametrize("frames, words", [
    ([b"HE\x01\x0b", cbor.dumps({"id": 1, "cids": []})], "asks for 0 CIDs"),
    ([b"HE\x01\x0b", cbor.dumps({"id": 1, "cids": [bytes(C)] * 65})], "asks for 65 CIDs; 1 to 64"),
    ([b"HE\x01\x0b", cbor.dumps({"id": 2**63 - 2, "cids": [bytes(C)] * 3})], "out of range for 3 requests"),
    ([b"HE\x01\x0b", cbor.dumps({"id": 1, "cids": ["text"]})], "must be byte strings"),
    ([b"HE\x01\x0b", cbor.dumps({"id": True, "cids": [bytes(C)]})], "wrong type"),
    ([b"HE\x01\x0c", cbor.dumps({"ids": bytes(8), "sizes": bytes(4)}), b"x"], "add up to 0 bytes, the payload has 1"),
    ([b"HE\x01\x0c", cbor.dumps({"ids": bytes(7), "sizes": bytes(4)}), b""], "8 bytes of id and 4 of size"),
    ([b"HE\x01\x0c", cbor.dumps({"ids": bytes(8 * 65), "sizes": bytes(4 * 65)}), b""], "1 to 64 entries"),
    ([b"HE\x01\x0c", cbor.dumps({"ids": b"\xff" * 8, "sizes": bytes(4)}), b""], "id is out of range"),
    ([b"HE\x01\x0c", cbor.dumps({"ids": bytes(8), "sizes": bytes(4)})], "missing payload"),
])
def test_bad_get_many_and_blocks_say_why(frames, words):
    with pytest.raises(DecodeError, match=words):
        parse_message(frames)
    with pytest.raises(DecodeError, match=words):
        _general(frames)


def test_blocks_payload_is_bounded():
    with pytest.raises(DecodeError, match="over the 1000-byte limit"):
        parse_message(serialize_message(Blocks((1,), (1001,), b"x" * 1001)), max_payload=1000)


@given(st.sampled_from([Get(8, C, 5, 100), Get(2**40, C), Block(8, C, 5, 11, b"world"),
                        GetMany(5, (C, CID.for_block(b"y"))), Blocks((1, 2**40), (3, 2), b"abcde")]).flatmap(
    lambda m: st.tuples(st.just(serialize_message(m)), mutations(serialize_message(m)[1]))))
@settings(max_examples=500)
def test_fast_readers_accept_and_refuse_what_the_general_reader_does(args):
    frames, body = args
    mutated = [frames[0], body, *frames[2:]]
    assert _outcome(parse_message, mutated) == _outcome(_general, mutated)


def test_other_layouts_take_the_general_path():
    # keys in another order and a non-shortest integer: not what Hearth writes, still a valid message
    body = b"\xa3" + b"\x66offset\x18\x05" + b"\x62id\x01" + b"\x63cid\x58\x24" + bytes(C)
    assert parse_message([b"HE\x01\x05", body]) == Get(1, C, 5)


def test_stream_listing_is_bounded():
    from edge.wire.messages import MAX_STREAMS
    from edge.wire.streamentry import MAX_ENTRY
    big = serialize_message(Streams(1, (b"x" * (MAX_ENTRY + 1),), 1))
    with pytest.raises(DecodeError, match="at most"):
        parse_message(big)
    many = [b"HE\x01\x0e", cbor.dumps({"id": 1, "entries": [b"x"] * (MAX_STREAMS + 1), "total": 1})]
    with pytest.raises(DecodeError, match="at most"):
        parse_message(many)
    with pytest.raises(DecodeError, match="out of range"):
        parse_message([b"HE\x01\x0d", cbor.dumps({"id": 1, "start": MAX_STREAMS + 1, "name": ""})])
    with pytest.raises(DecodeError, match="64 characters"):
        parse_message(serialize_message(ListStreams(1, 0, "n" * 65)))
