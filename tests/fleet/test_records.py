"""The fleet plane's records: round trips, golden fields, and mutated or random bytes that give RecordError only
(a mutation that still parses must be the same record: the signature covers every byte)."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.fleet.certificates import sign_certificate
from edge.fleet.records import (MAX_RECORD, Presence, RecordError, Status, check, next_seq, parse_record,
                                presence_topic, serialize_record, status_topic)
from edge.identity import Identity
from edge.ipld import cbor
from tests.ipld.test_formats import mutations

NODE = Identity.from_seed(bytes(range(32)))
FLEET = Identity.from_seed(bytes(range(1, 33)))
NOW = 1_760_000_000
P = Presence(NODE.node_id, 1_760_000_000_000, NOW, "as3320", (("192.0.2.7", 4801), ("2001:db8::1", 4801)),
             ("store", "probe"), 5 << 30, 1, "0.1.0")
S = Status(NODE.node_id, 1_760_000_000_001, NOW, "0.1.0", "a", 3600, 1 << 30, 200 << 30, 12345, 7, 0, "ok")
SAMPLES = [P, S, Presence(NODE.node_id, 0, 0, "x", (), cert=sign_certificate(FLEET, NODE.node_id))]


@pytest.mark.parametrize("record", SAMPLES, ids=["presence", "status", "certified"])
def test_round_trip(record):
    data = serialize_record(record, NODE)
    assert parse_record(data) == record and len(data) <= MAX_RECORD


GOLDEN_STATUS = (   # Status(NODE, seq 7, time 1760000000, version "0.1.0"), the rest at defaults: DAG-CBOR key order
    "af" "6174" "66737461747573" "63736571" "07" "63736967" "5840"
    "b56e2c76290794014396c7aa89b4bf384baa4c48c9047147e68abaf0f16ead3b"
    "89ea1f62ec4f3398ad253f652cee9931aad5d5730599fd56605fe1bedc758002"
    "6463657274" "40" "646e6f6465" "7836" + NODE.node_id.encode().hex() + "64736c6f74" "60"
    "6474696d65" "1a68e77800" "65706565727300" "65736861726500" "6573746f726500" "666572726f727300"
    "666865616c7468" "626f6b" "66736572766564" "00" "6675707469" "6d6500" "6776657273696f6e" "65302e312e30")


def test_golden_status_record():
    record = Status(NODE.node_id, 7, 1_760_000_000, "0.1.0")
    assert serialize_record(record, NODE).hex() == GOLDEN_STATUS
    assert parse_record(bytes.fromhex(GOLDEN_STATUS)) == record


def test_the_fields_are_signed_with_their_own_prefix():
    value = cbor.loads(serialize_record(P, NODE))
    assert value["t"] == "presence" and value["addrs"] == [["192.0.2.7", 4801], ["2001:db8::1", 4801]]
    body = cbor.dumps({k: v for k, v in value.items() if k != "sig"})
    assert NODE.signing_key.verify_key.verify(b"hearth-presence\0" + body, value["sig"])
    status = cbor.loads(serialize_record(S, NODE))
    status["t"] = "presence"   # a status record passed off as presence fails on its fields, then on its signature
    with pytest.raises(RecordError):
        parse_record(cbor.dumps(status))


def test_check_topic_age_and_fleet():
    topic = presence_topic("open", P.region, P.node)
    check(P, topic, now=NOW)
    for bad_topic, kwargs, reason in (
            (presence_topic("open", P.region, FLEET.node_id), {}, "forged"),
            (topic, {"now": NOW + 10_000}, "stale"),
            (topic, {"now": NOW - 10_000}, "stale"),
            (topic, {"now": NOW, "fleet_key": FLEET.node_id}, "not certified")):
        with pytest.raises(RecordError) as err:
            check(P, bad_topic, **kwargs)
        assert err.value.reason == reason
    certified = SAMPLES[2]
    check(certified, presence_topic("open", "x", NODE.node_id), FLEET.node_id, now=0, max_age=10)
    assert status_topic("hn1", NODE.node_id).endswith("/status/" + NODE.node_id)


def test_bounds():
    for record, words in ((Presence(NODE.node_id, 1, NOW, "x", (("not-an-ip", 1),)), "IP"),
                          (Presence(NODE.node_id, 1, NOW, "x", (("10.0.0.1", 0),)), "port"),
                          (Presence(NODE.node_id, 1, NOW, "x", (("10.0.0.1", 1),) * 9), "at most"),
                          (Presence(NODE.node_id, 1, NOW, "Bad/Region", ()), "region"),
                          (Presence(NODE.node_id, 1, NOW, "x", (), caps=("a b",)), "capability"),
                          (Status(NODE.node_id, 1, NOW, "v", health="fine"), "health"),
                          (Status(FLEET.node_id, 1, NOW, "v"), "itself")):
        with pytest.raises(RecordError, match=words):
            serialize_record(record, NODE)


def test_sequence_numbers_go_up_across_restarts():
    assert next_seq(0, 1000.0) == 1_000_000 and next_seq(2_000_000, 1000.0) == 2_000_001
    assert next_seq(0) > next_seq(0, time.time() - 60)


def _outcome(data):
    try:
        return parse_record(data)
    except RecordError as exc:
        assert str(exc)
        return None


@given(st.sampled_from(SAMPLES).flatmap(lambda r: st.tuples(st.just(r),
                                                            mutations(serialize_record(r, NODE)))))
@settings(max_examples=300)
def test_mutated_records_are_refused_or_unchanged(args):
    record, data = args
    got = _outcome(data)
    assert got is None or got == record


@given(st.binary(max_size=600))
def test_random_bytes(data):
    assert _outcome(data) is None
