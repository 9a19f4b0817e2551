"""The job messages (transcoding for neighbours): round trips, limits, and mutated bodies give DecodeError only."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.wire import parse_message, serialize_message
from edge.wire.jobs import Encoders, EncodersInfo, JobCancel, JobQuery, JobState, JobSubmit, job_statement
from tests.ipld.test_formats import clean, mutations

C = CID.for_block(b"source")
D = CID.for_block(b"output", 0x70)
SAMPLES = [Encoders(1), EncodersInfo(1, "libx264", False, 2, 1, 1830, True),
           JobSubmit(2, "a1-b2", C, 10_000_000, 10_000, "720p,360p", 2000, "auto", "veryfast", "clip.v2"),
           JobQuery(3, "a1-b2"), JobCancel(4, "a1-b2"), JobState(3, "a1-b2", "running", 4000, 950),
           JobState(3, "a1-b2", "done", 10_000, 1200, D, b"s" * 64),
           JobState(3, "a1-b2", "failed", message="the source does not decode")]


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
])
def test_bad_job_messages_say_why(kind, body, words):
    with pytest.raises(DecodeError, match=words):
        parse_message([b"HE\x01" + bytes([kind]), cbor.dumps(body)])


def test_the_statement_binds_job_source_and_output():
    assert job_statement("j", C, D) != job_statement("j", D, C) != job_statement("k", C, D)


@given(st.sampled_from(SAMPLES).flatmap(lambda m: st.tuples(
    st.just(serialize_message(m)), mutations(serialize_message(m)[1]))))
@settings(max_examples=400)
def test_mutated_bodies(args):
    frames, body = args
    clean(parse_message, [frames[0], body])
