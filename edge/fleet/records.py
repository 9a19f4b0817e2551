"""The fleet plane's records and topics: pure functions, bounded, every record signed by the node it names.

Topics (FLEET: the fleet key's id, or "open" for nodes without one; REGION: [a-z0-9-]{1,32}):

    hearth/FLEET/presence/REGION/NODE   retained, MQTT 5 message expiry PRESENCE_EXPIRY; the node's last will
                                        is an empty retained message there, which clears it at the broker
    hearth/FLEET/status/NODE            retained; a node's telemetry each minute and on change

Records are DAG-CBOR maps with exactly these keys (docs/fleet.md); parse_record and serialize_record are the
only ways in and out, and RecordError (a DecodeError) says what is wrong:

    presence  {"t": "presence", "node", "seq", "time", "region", "addrs": [[ip, port], ...], "caps": [...],
               "free", "proto", "version", "cert", "sig"}
    status    {"t": "status", "node", "seq", "time", "version", "slot", "uptime", "store", "share", "served",
               "peers", "errors", "health", "cert", "sig"}

"sig" is the node key's Ed25519 signature of "hearth-presence\\0" (or "hearth-status\\0") + the DAG-CBOR map
without "sig": a record signed as one kind never passes for the other, nor for a certificate or a request.
"cert" is the node's fleet certificate (b"" outside a fleet); in a fleet a record whose certificate the fleet
key did not sign is refused. "seq" grows with every record a node publishes (milliseconds of the wall clock,
at least one more than the last), so a replayed older record is recognised; "time" (unix seconds) bounds how
old a record may be when it is first seen.
"""

import ipaddress
import re
import time
from dataclasses import dataclass

from edge.config import REGION
from edge.errors import DecodeError
from edge.fleet.certificates import MAX_CERT, CertificateError, read_certificate
from edge.identity import Identity, check_node_id, public_key_of, verify
from edge.ipld import cbor

MAX_RECORD = 4096             # bytes of one record: the largest message the plane takes from the broker
MAX_ADDRS = 8
MAX_CAPS = 16
MAX_TEXT = 32                 # characters of a version, slot, health or capability
PRESENCE_EXPIRY = 900         # seconds the broker keeps a presence record (republished well within it)
MAX_AGE = PRESENCE_EXPIRY     # a record older than this when it arrives is refused (a replay, or a stale one)
MAX_SKEW = 300                # seconds a record's time may lie ahead of ours
TEXT = re.compile(r"[\x21-\x7e]{0,32}\Z")   # printable ASCII without spaces
CAP = re.compile(r"[a-z0-9-]{1,16}\Z")
HEALTH = ("ok", "degraded", "failing")
_U63 = (1 << 63) - 1
PREFIX = {"presence": b"hearth-presence\0", "status": b"hearth-status\0"}
FIELDS = {
    "presence": {"t", "node", "seq", "time", "region", "addrs", "caps", "free", "proto", "version", "cert", "sig"},
    "status": {"t", "node", "seq", "time", "version", "slot", "uptime", "store", "share", "served", "peers",
               "errors", "health", "cert", "sig"},
}


class RecordError(DecodeError):
    """A record from the broker is malformed, unsigned, not the fleet's, too old, or from the future; reason
    says which in one word (what the plane counts)."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Presence:
    node: str
    seq: int
    time: int
    region: str
    addrs: tuple[tuple[str, int], ...]
    caps: tuple[str, ...] = ()
    free: int = 0
    proto: int = 1
    version: str = ""
    cert: bytes = b""


@dataclass(frozen=True)
class Status:
    node: str
    seq: int
    time: int
    version: str
    slot: str = ""
    uptime: int = 0
    store: int = 0       # bytes the store holds
    share: int = 0       # bytes it may hold (the quota; 0: none set)
    served: int = 0      # bytes served to neighbours and players since start
    peers: int = 0
    errors: int = 0
    health: str = "ok"
    cert: bytes = b""


def fleet_name(fleet_key: str) -> str:
    return fleet_key or "open"


def check_region(region: str) -> str:
    if not isinstance(region, str) or not REGION.match(region):
        raise RecordError(f"region {region!r} must be 1-32 lower-case letters, digits or '-'")
    return region


def presence_topic(fleet: str, region: str, node: str) -> str:
    return f"hearth/{fleet}/presence/{check_region(region)}/{node}"


def status_topic(fleet: str, node: str) -> str:
    return f"hearth/{fleet}/status/{node}"


def topic_node(topic: str) -> str:
    """The node id a topic names (its last level)."""
    return topic.rsplit("/", 1)[-1]


def next_seq(last: int, now: float | None = None) -> int:
    """A sequence number above last: the wall clock's milliseconds, so a restarted node still goes up."""
    return max(last + 1, int((time.time() if now is None else now) * 1000))


# serializing -------------------------------------------------------------------------------------------------


def _body(record) -> dict:
    if isinstance(record, Presence):
        return {"t": "presence", "node": record.node, "seq": record.seq, "time": record.time,
                "region": record.region, "addrs": [[h, p] for h, p in record.addrs], "caps": list(record.caps),
                "free": record.free, "proto": record.proto, "version": record.version, "cert": record.cert}
    return {"t": "status", "node": record.node, "seq": record.seq, "time": record.time, "version": record.version,
            "slot": record.slot, "uptime": record.uptime, "store": record.store, "share": record.share,
            "served": record.served, "peers": record.peers, "errors": record.errors, "health": record.health,
            "cert": record.cert}


def serialize_record(record, identity: Identity) -> bytes:
    """The signed bytes of a Presence or Status record; RecordError if it breaks a bound (checked as a
    receiver would, so a node never publishes what its neighbours refuse)."""
    body = _body(record)
    if record.node != identity.node_id:
        raise RecordError("a node signs only records that name itself")
    data = cbor.dumps(body | {"sig": identity.sign(PREFIX[body["t"]] + cbor.dumps(body))})
    parse_record(data)
    return data


# parsing -----------------------------------------------------------------------------------------------------


def _int(value, name, high=_U63) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise RecordError(f"{name} must be a whole number from 0 to {high}")
    return value


def _text(value, name, pattern=TEXT) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise RecordError(f"{name} must be at most {MAX_TEXT} printable characters")
    return value


def _addrs(value) -> tuple:
    if not isinstance(value, list) or len(value) > MAX_ADDRS:
        raise RecordError(f"addrs must be a list of at most {MAX_ADDRS} [ip, port] pairs")
    out = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str) or len(pair[0]) > 45:
            raise RecordError("each address is [ip, port]")
        try:
            ip = ipaddress.ip_address(pair[0])
        except ValueError:
            raise RecordError(f"address {pair[0][:45]!r} is not an IP address") from None
        if str(ip) != pair[0] or ip.is_multicast or ip.is_unspecified:
            raise RecordError("an address is written in its canonical form and names one host")
        out.append((pair[0], _int(pair[1], "a port", 65535)))
        if out[-1][1] == 0:
            raise RecordError("a port is 1 to 65535")
    return tuple(out)


def parse_record(data: bytes) -> Presence | Status:
    """The record in data after checking its form and its signature (not yet its certificate, age or sequence:
    see check); RecordError saying what is wrong otherwise."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_RECORD:
        raise RecordError(f"a record is at most {MAX_RECORD} bytes")
    try:
        value = cbor.loads(bytes(data))
    except DecodeError as exc:
        raise RecordError(f"not a record: {exc}") from None
    if not isinstance(value, dict) or value.get("t") not in FIELDS or set(value) != FIELDS[value["t"]]:
        raise RecordError("a record has exactly the keys of a presence or a status record")
    kind = value["t"]
    try:
        check_node_id(value["node"])
    except DecodeError as exc:
        raise RecordError(f"node: {exc}") from None
    common = {"node": value["node"], "seq": _int(value["seq"], "seq"), "time": _int(value["time"], "time"),
              "version": _text(value["version"], "version")}
    cert = value["cert"]
    if not isinstance(cert, bytes) or len(cert) > MAX_CERT:
        raise RecordError(f"cert must be at most {MAX_CERT} bytes")
    if kind == "presence":
        if not isinstance(value["caps"], list) or len(value["caps"]) > MAX_CAPS:
            raise RecordError(f"caps must be a list of at most {MAX_CAPS} names")
        record = Presence(**common, region=check_region(value["region"]), addrs=_addrs(value["addrs"]),
                          caps=tuple(_text(c, "a capability", CAP) for c in value["caps"]),
                          free=_int(value["free"], "free"), proto=_int(value["proto"], "proto", 0xFFFF), cert=cert)
    else:
        if value["health"] not in HEALTH:
            raise RecordError(f"health must be one of {', '.join(HEALTH)}")
        record = Status(**common, slot=_text(value["slot"], "slot"), uptime=_int(value["uptime"], "uptime"),
                        store=_int(value["store"], "store"), share=_int(value["share"], "share"),
                        served=_int(value["served"], "served"), peers=_int(value["peers"], "peers"),
                        errors=_int(value["errors"], "errors"), health=value["health"], cert=cert)
    sig = value["sig"]
    if not isinstance(sig, bytes) or len(sig) != 64 or \
            not verify(record.node, PREFIX[kind] + cbor.dumps({k: v for k, v in value.items() if k != "sig"}), sig):
        raise RecordError("the record is not signed by the node it names", "unsigned")
    if cbor.dumps(value) != bytes(data):   # one encoding per record: what was signed is what is stored
        raise RecordError("the record is not in canonical DAG-CBOR")
    return record


def check(record: Presence | Status, topic: str, fleet_key: str = "", now: float | None = None,
          max_age: float = MAX_AGE) -> None:
    """Whether a parsed record may be used as it came on topic: it names the topic's node, it is fresh (not
    older than max_age, not from the future), and in a fleet (fleet_key set) its certificate is the fleet's.
    RecordError saying why not."""
    if topic_node(topic) != record.node:
        raise RecordError("the record names another node than its topic", "forged")
    now = time.time() if now is None else now
    if record.time < now - max_age:
        raise RecordError(f"the record is older than {max_age:.0f} s", "stale")
    if record.time > now + MAX_SKEW:
        raise RecordError("the record's time is ahead of this node's clock", "stale")
    if fleet_key:
        try:
            read_certificate(record.cert, public_key_of(fleet_key), record.node, now)
        except CertificateError as exc:
            raise RecordError(f"not certified by the fleet: {exc}", "not certified") from None
