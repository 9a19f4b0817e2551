"""The job messages (transcoding for neighbours): round trips, limits, and mutated bodies give DecodeError only."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.wire import parse_message, serialize_message
from edge.wire.jobs import MAX_FEED
from edge.wire.jobs import (Encoders, EncodersInfo, JobCancel, JobQuery, JobState, JobSubmit, LiveFeed, LiveOutput,
                            LivePull, LiveSubmit, job_statement, live_statement)
from tests.ipld.test_formats import clean, mutations

C = CID.for_block(b"source")
D = CID.for_block(b"output", 0x70)
SAMPLES = [Encoders(1), EncodersInfo(1, "libx264", False, 2, 1, 1830, True),
           JobSubmit(2, "a1-b2", C, 10_000_000, 10_000, "720p,360p", 2000, "auto", "veryfast", "clip.v2"),
           JobQuery(3, "a1-b2"), JobCancel(4, "a1-b2"), JobState(3, "a1-b2", "running", 4000, 950),
           JobState(3, "a1-b2", "done", 10_000, 1200, D, b"s" * 64),
           JobState(3, "a1-b2", "failed", message="the source does not decode"),
           LiveSubmit(5, "l1", "testsrc", 0, 0, "720p,360p", 2000),
           LiveSubmit(5, "l2", str(C), 9000, 8000, "240p", 1000, "libx264", "ultrafast"),
           LivePull(6, "l1", 7, 1 << 20),
           LiveOutput(7, "l1", 7, 3 << 20, 1 << 20, b'{"t": "segment"}', b"s" * 64, b"\x00" * 1000),
           LiveSubmit(5, "l3", "flv", 0, 0, "240p", 1000), LiveFeed(8, "l3", 3, False, b"\x09" * 1000),
           LiveFeed(8, "l3", 4, True, b""),
           LiveSubmit(5, "l4", str(C), 9000, 0, "240p", 1000, "auto", "veryfast", 3_040)]   # a resumed file


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert parse_message(serialize_message(msg)) == msg


@pytest.mark.parametrize("kind, body, words", [
    (22, {"id": 1, "job": "../x", "source": bytes(C), "size": 1, "duration": 1, "ladder": "360p", "segment": 1},
     "a job id"),
    (22, {"id": 1, "job": "j", "source": bytes(C), "size": 1, "duration": 1, "ladder": "x" * 65, "segment": 1},
     "'ladder'"),
    (22, {"id": 1, "job": "j", "source": bytes(C), "size": 1, "duration": 1, "ladder": "360p", "segment": 10**6},
     "'segment'"),
    (21, {"id": 1, "encoder": "x", "hardware": False, "slots": 2, "free": 3, "speed": 0, "accepts": True}, "'free'"),
    (21, {"id": 1, "encoder": "x", "hardware": 1, "slots": 2, "free": 1, "speed": 0, "accepts": True}, "'hardware'"),
    (25, {"id": 1, "job": "j", "state": "exploded"}, "state must be"),
    (25, {"id": 1, "job": "j", "state": "done", "signature": b"x" * 63}, "64 bytes"),
    (26, {"id": 1, "job": "j", "source": "/etc/passwd", "size": 0, "duration": 0, "ladder": "240p", "segment": 1000},
     "testsrc, flv or the CID"),
    (27, {"id": 1, "job": "j", "seq": 0, "offset": 1 << 40}, "'offset'"),
    (26, {"id": 1, "job": "j", "source": "testsrc", "size": 0, "duration": 0, "ladder": "240p", "segment": 1000,
          "start": 2000}, "only a file source"),
    (26, {"id": 1, "job": "j", "source": "flv", "size": 0, "duration": 0, "ladder": "240p", "segment": 1000,
          "start": 1}, "only a file source"),
    (26, {"id": 1, "job": "j", "source": str(C), "size": 9, "duration": 0, "ladder": "240p", "segment": 1000,
          "start": 24 * 3600 * 1000 + 1}, "'start'"),
    (26, {"id": 1, "job": "j", "source": str(C), "size": 9, "duration": 0, "ladder": "240p", "segment": 1000,
          "start": -1}, "'start'"),
    (26, {"id": 1, "job": "j", "source": str(C), "size": 9, "duration": 0, "ladder": "240p", "segment": 1000,
          "start": "1500"}, "'start'"),
])
def test_bad_job_messages_say_why(kind, body, words):
    with pytest.raises(DecodeError, match=words):
        parse_message([b"HE\x01" + bytes([kind]), cbor.dumps(body)])


def test_a_live_output_stays_inside_its_total_and_limits():
    def frames(**body):
        return [b"HE\x01" + bytes([28]), cbor.dumps({"id": 1, "job": "j", "seq": 0, "total": 10, "offset": 0,
                                                     "header": b"{}", "signature": b"s" * 64, **body}), b"x" * 11]
    for bad in ({}, {"signature": b"s"}, {"header": b"h" * 5000}):
        with pytest.raises(DecodeError, match="LiveOutput"):
            parse_message(frames(**bad))
    with pytest.raises(DecodeError, match="missing payload"):
        parse_message(frames()[:2])


def test_a_live_feed_is_bounded():
    def frames(data, **body):
        return [b"HE\x01" + bytes([29]), cbor.dumps({"id": 1, "job": "j", "seq": 0, "end": False, **body}), data]
    assert parse_message(frames(b"x" * MAX_FEED)).data == b"x" * MAX_FEED
    with pytest.raises(DecodeError, match="LiveFeed"):
        parse_message(frames(b"x" * (MAX_FEED + 1)))
    with pytest.raises(DecodeError, match="'end'"):
        parse_message(frames(b"x", end=1))
    with pytest.raises(DecodeError, match="missing payload"):
        parse_message(frames(b"")[:2])


def test_a_live_submit_without_a_start_starts_at_the_beginning():
    body = {"id": 1, "job": "j", "source": str(C), "size": 9, "duration": 0, "ladder": "240p", "segment": 1000}
    assert parse_message([b"HE\x01" + bytes([26]), cbor.dumps(body)]).start_ms == 0   # as before the field


def test_the_statement_binds_job_source_and_output():
    assert job_statement("j", C, D) != job_statement("j", D, C) != job_statement("k", C, D)
    assert len({live_statement("j", 1, C, b"h"), live_statement("j", 2, C, b"h"), live_statement("j", 1, D, b"h"),
                live_statement("j", 1, C, b"g"), live_statement("k", 1, C, b"h")}) == 5


@given(st.sampled_from(SAMPLES).flatmap(lambda m: st.tuples(
    st.just(serialize_message(m)), mutations(serialize_message(m)[1]))))
@settings(max_examples=400)
def test_mutated_bodies(args):
    frames, body = args
    clean(parse_message, [frames[0], body])
