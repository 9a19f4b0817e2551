"""WebRTC signals through the broker: signed by their sender, for one node, fresh, each session once; every
way a hostile publisher could bend one is refused with a reason."""

import time

import pytest

from edge.fleet.signal import (MAX_SDP, Inbox, Signal, SignalError, new_sid, parse_signal, serialize_signal,
                               signal_topic)
from edge.identity import Identity
from edge.ipld import cbor

SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"


@pytest.fixture
def pair():
    return Identity.generate(), Identity.generate()


def _offer(alice, bob, **kw):
    fields = {"kind": "offer", "sender": alice.node_id, "to": bob.node_id, "sid": new_sid(),
              "time": int(time.time()), "sdp": SDP} | kw
    return Signal(**fields)


def test_a_signed_offer_is_taken_once(pair):
    alice, bob = pair
    signal = _offer(alice, bob)
    data = serialize_signal(signal, alice)
    inbox = Inbox(bob.node_id)
    assert inbox.take(signal_topic("open", bob.node_id), data) == signal
    with pytest.raises(SignalError, match="replay"):
        inbox.take(signal_topic("open", bob.node_id), data)
    answer = Signal("answer", bob.node_id, alice.node_id, signal.sid, int(time.time()), SDP)
    assert Inbox(alice.node_id).take(signal_topic("open", alice.node_id), serialize_signal(answer, bob)) == answer


def test_what_a_hostile_publisher_could_send_is_refused(pair):
    alice, bob = pair
    mallory = Identity.generate()
    inbox = Inbox(bob.node_id)
    topic = signal_topic("open", bob.node_id)
    good = serialize_signal(_offer(alice, bob), alice)
    value = cbor.loads(good)
    forged = cbor.dumps(value | {"from": mallory.node_id})            # alice's signature, mallory's name
    cases = [
        (forged, "not signed by the node"),
        (cbor.dumps(value | {"sig": bytes(64)}), "not signed"),
        (cbor.dumps(value | {"extra": 1}), "exactly the keys"),
        (cbor.dumps(value | {"t": "command"}), "offer or answer"),
        (cbor.dumps(value | {"sid": b"short"}), "16 bytes"),
        (cbor.dumps(value | {"sdp": "x" * (MAX_SDP + 1)}), "at most"),
        (b"\xa1garbage", "DAG-CBOR|map"),
        (b"\x00" * 20000, "at most"),
        (serialize_signal(_offer(alice, mallory), alice), "another node"),                  # not for bob
        (serialize_signal(_offer(alice, bob, time=int(time.time()) - 3600), alice), "stale"),
        (serialize_signal(_offer(bob, alice), bob), "another node"),
    ]
    for data, why in cases:
        with pytest.raises(SignalError, match=why):
            inbox.take(topic, data)
    with pytest.raises(SignalError, match="sdp"):   # control characters in the SDP
        serialize_signal(_offer(alice, bob, sdp="v=0\x00"), alice)
    with pytest.raises(SignalError, match="signs only"):
        serialize_signal(_offer(alice, bob), mallory)
    assert inbox.take(topic, good).sender == alice.node_id   # none of that spent the real one
