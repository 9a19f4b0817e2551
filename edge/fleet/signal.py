"""WebRTC signaling through the fleet broker: an offer and its answer, signed by the node that sends them.

    hearth/FLEET/signal/NODE   to NODE; not retained, MQTT 5 message expiry SIGNAL_EXPIRY

A signal is a DAG-CBOR map with exactly the keys t ("offer" or "answer"), from, to, sid (16 bytes: the session
it belongs to), time, sdp (at most MAX_SDP characters) and sig: Ed25519 by `from` over b"hearth-signal\\0" +
the map without sig. Whoever can publish on the broker can neither speak for another node nor replay an old
signal (time within MAX_AGE, each sid taken once). A valid offer only opens a WebRTC session, bounded in number
and rate by its receiver; what runs inside it is the node-to-node transport, CURVE end to end, so admission
(open or fleet) is decided there as on any other connection.
"""

import os
import re
import time
from dataclasses import dataclass

from edge.errors import DecodeError
from edge.identity import Identity, check_node_id, verify
from edge.ipld import cbor

PREFIX = b"hearth-signal\0"
MAX_SDP = 16 * 1024
MAX_SIGNAL = MAX_SDP + 512
MAX_AGE = 60.0          # seconds: a signal older than this is refused (ICE would have given up anyway)
SIGNAL_EXPIRY = 60      # seconds the broker may hold one for a node that is reconnecting
KINDS = ("offer", "answer")
FIELDS = {"t", "from", "to", "sid", "time", "sdp", "sig"}
SDP_TEXT = re.compile(r"[\x20-\x7e\r\n]*\Z")


class SignalError(DecodeError):
    """A signal that is malformed, unsigned, not for us, stale or replayed."""


@dataclass(frozen=True)
class Signal:
    kind: str
    sender: str
    to: str
    sid: bytes
    time: int
    sdp: str


def signal_topic(fleet: str, node: str) -> str:
    return f"hearth/{fleet}/signal/{node}"


def new_sid() -> bytes:
    return os.urandom(16)


def serialize_signal(signal: Signal, identity: Identity) -> bytes:
    if signal.sender != identity.node_id:
        raise SignalError("a node signs only signals it sends")
    body = {"t": signal.kind, "from": signal.sender, "to": signal.to, "sid": signal.sid, "time": signal.time,
            "sdp": signal.sdp}
    data = cbor.dumps(body | {"sig": identity.sign(PREFIX + cbor.dumps(body))})
    parse_signal(data)   # checked as a receiver would
    return data


def parse_signal(data: bytes) -> Signal:
    """The signal in data, its signature checked; SignalError saying what is wrong."""
    if len(data) > MAX_SIGNAL:
        raise SignalError(f"a signal is at most {MAX_SIGNAL} bytes")
    try:
        value = cbor.loads(bytes(data))
    except DecodeError as exc:
        raise SignalError(f"not DAG-CBOR: {exc}") from None
    if not isinstance(value, dict) or set(value) != FIELDS:
        raise SignalError("a signal is a map with exactly the keys " + ", ".join(sorted(FIELDS)))
    if value["t"] not in KINDS:
        raise SignalError("t must be offer or answer")
    for key in ("from", "to"):
        try:
            check_node_id(value[key])
        except DecodeError as exc:
            raise SignalError(f"{key}: {exc}") from None
    if not isinstance(value["sid"], bytes) or len(value["sid"]) != 16:
        raise SignalError("sid must be 16 bytes")
    if not isinstance(value["time"], int) or isinstance(value["time"], bool) or not 0 <= value["time"] < 1 << 40:
        raise SignalError("time must be a whole number of seconds")
    sdp = value["sdp"]
    if not isinstance(sdp, str) or len(sdp) > MAX_SDP or not SDP_TEXT.match(sdp):
        raise SignalError(f"sdp must be at most {MAX_SDP} printable characters")
    sig = value["sig"]
    body = {k: v for k, v in value.items() if k != "sig"}
    if not isinstance(sig, bytes) or len(sig) != 64 or not verify(value["from"], PREFIX + cbor.dumps(body), sig):
        raise SignalError("the signal is not signed by the node it names as its sender")
    if cbor.dumps(value) != bytes(data):
        raise SignalError("the signal is not in canonical DAG-CBOR")
    return Signal(value["t"], value["from"], value["to"], value["sid"], value["time"], sdp)


class Inbox:
    """What a node accepts: signals to itself, from another node, fresh, each session id once (the last
    MAX_SEEN remembered, and a signal older than MAX_AGE is refused anyway)."""

    MAX_SEEN = 4096

    def __init__(self, me: str):
        self.me = me
        self.seen: dict[tuple[bytes, str], float] = {}

    def take(self, topic: str, data: bytes, now: float | None = None) -> Signal:
        signal = parse_signal(data)
        now = time.time() if now is None else now
        if signal.to != self.me or not topic.endswith("/" + self.me):
            raise SignalError("the signal is for another node")
        if signal.sender == self.me:
            raise SignalError("the signal is our own")
        if not now - MAX_AGE <= signal.time <= now + MAX_AGE:
            raise SignalError("the signal is stale (or from a clock far off)")
        key = (signal.sid, signal.kind)
        if key in self.seen:
            raise SignalError("the signal was seen before (a replay)")
        if len(self.seen) >= self.MAX_SEEN:
            for old in [k for k, t in self.seen.items() if t < now - MAX_AGE] or list(self.seen)[:len(self.seen) // 2]:
                del self.seen[old]
        self.seen[key] = now
        return signal
