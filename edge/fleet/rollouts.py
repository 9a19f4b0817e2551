"""Staged rollouts' records: pure functions, bounded, each signed by a key the fleet key certified.

The fleet key stays offline; it certifies a rollout key once (`hearth fleet rollout-key`), and that key signs
the rollout record. Devices report on it with their node key. Topics (FLEET: the fleet key's id):

    hearth/FLEET/rollout            retained: the rollout record, the command and its state in one (the newest
                                    one the controller or `halt`/`resume` published)
    hearth/FLEET/rollout-report/NODE  retained: that node's report on the rollout it last saw

Formats (DAG-CBOR maps with exactly these keys, one encoding each; docs/fleet.md):

    rollout key   {"use": "rollout", "fleet": fleet public key, "key": rollout public key, "expires": unix s,
                   "sig": the fleet key's sig of "hearth-rollout-key\\0" + the map without "sig"}
    rollout       {"t": "rollout", "id": 16 hex, "seq", "time", "url", "sha256": 32 bytes (the bundle file's),
                   "version", "waves": [parts per 10,000, rising, the last 10,000], "halt": parts per 10,000,
                   "wave": the index of the wave now open, "state": running | halted | done, "failed": [node
                   ids], "reason", "key": the rollout key's certificate, "sig": the rollout key's sig of
                   "hearth-rollout\\0" + the map without "sig"}
    report        {"t": "report", "node", "seq", "time", "rollout": its id, "state": waiting | installing |
                   healthy | failed | rolled-back, "version", "slot", "detail", "cert": the node's fleet
                   certificate, "sig": the node key's sig of "hearth-rollout-report\\0" + the map without "sig"}

"seq" grows with every record its signer publishes (the wall clock's milliseconds, at least one more than the
last): a device takes a rollout record only when its seq is above the highest it has taken (kept on disk), so
an old command replayed, even after a halt or a restart, changes nothing.

Wave membership is the device's own decision and anyone can repeat it: the first 8 bytes of SHA-256("hearth-
wave\\0" + rollout id + node id), read as a fraction in [0, 1), below the wave's share.
"""

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from edge.errors import DecodeError
from edge.fleet.certificates import MAX_CERT, CertificateError, read_certificate
from edge.fleet.records import MAX_SKEW, RecordError
from edge.identity import Identity, check_node_id, node_id_of, public_key_of, verify
from edge.ipld import cbor

MAX_ROLLOUT = 6144          # bytes of a rollout record (the failed list dominates; under mqtt.MAX_PACKET)
MAX_REPORT = 2048
MAX_WAVES = 16
MAX_FAILED = 64             # failed nodes a rollout record names (the count goes on past it)
MAX_URL = 512
MAX_DETAIL = 200
WHOLE = 10_000              # shares are parts per 10,000 (1% = 100)
STATES = ("running", "halted", "done")
REPORTS = ("waiting", "installing", "healthy", "failed", "rolled-back")
FINAL = ("healthy", "failed", "rolled-back")
FAILURES = ("failed", "rolled-back")
KEY_PREFIX = b"hearth-rollout-key\0"
ROLLOUT_PREFIX = b"hearth-rollout\0"
REPORT_PREFIX = b"hearth-rollout-report\0"
ROLLOUT_ID = re.compile(r"[0-9a-f]{16}\Z")
TEXT = re.compile(r"[\x20-\x7e]*\Z")       # printable ASCII
URL = re.compile(r"https?://[\x21-\x7e]+\Z")
_U63 = (1 << 63) - 1
ROLLOUT_FIELDS = {"t", "id", "seq", "time", "url", "sha256", "version", "waves", "halt", "wave", "state", "failed",
                  "reason", "key", "sig"}
REPORT_FIELDS = {"t", "node", "seq", "time", "rollout", "state", "version", "slot", "detail", "cert", "sig"}
KEY_FIELDS = {"use", "fleet", "key", "expires", "sig"}


@dataclass(frozen=True)
class Rollout:
    id: str
    seq: int
    time: int
    url: str
    sha256: bytes
    version: str
    waves: tuple[int, ...]
    halt: int
    wave: int = 0
    state: str = "running"
    failed: tuple[str, ...] = ()
    reason: str = ""
    key: bytes = b""          # the rollout key's certificate


@dataclass(frozen=True)
class Report:
    node: str
    seq: int
    time: int
    rollout: str
    state: str
    version: str = ""
    slot: str = ""
    detail: str = ""
    cert: bytes = b""


def rollout_topic(fleet: str) -> str:
    return f"hearth/{fleet}/rollout"


def report_topic(fleet: str, node: str) -> str:
    return f"hearth/{fleet}/rollout-report/{node}"


def new_id() -> str:
    return secrets.token_hex(8)


def parse_share(text: str) -> int:
    """"2%", "0.5%" or "2" (percent) as parts per 10,000; RecordError for anything else."""
    value = text.strip().removesuffix("%")
    try:
        share = round(float(value) * 100)
    except ValueError:
        raise RecordError(f"{text!r} is not a percentage (e.g. 10%)") from None
    if not 0 <= share <= WHOLE or value.lower() in ("nan", "inf"):
        raise RecordError(f"{text!r} must be from 0% to 100%")
    return share


def parse_waves(text: str) -> tuple[int, ...]:
    """"1%,10%,50%,100%": the waves' shares, rising, the last 100%."""
    waves = tuple(parse_share(w) for w in text.split(",") if w.strip())
    return check_waves(waves)


def check_waves(waves) -> tuple[int, ...]:
    if not isinstance(waves, (list, tuple)) or not 1 <= len(waves) <= MAX_WAVES or \
            any(not isinstance(w, int) or isinstance(w, bool) or not 0 < w <= WHOLE for w in waves) or \
            list(waves) != sorted(set(waves)) or waves[-1] != WHOLE:
        raise RecordError(f"waves are 1 to {MAX_WAVES} rising shares above 0%, the last 100% (e.g. 1%,10%,100%)")
    return tuple(waves)


def position(rollout_id: str, node_id: str) -> int:
    """Where a node stands in a rollout's order: a number in [0, 2**64), the same wherever it is computed."""
    digest = hashlib.sha256(b"hearth-wave\0" + rollout_id.encode() + node_id.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def wave_of(rollout: Rollout, node_id: str) -> int:
    """The index of the first wave that takes node_id (position / 2**64 below the wave's share)."""
    where = position(rollout.id, node_id) * WHOLE
    for i, share in enumerate(rollout.waves):
        if where < share << 64:
            return i
    return len(rollout.waves) - 1   # not reached: the last wave is 100%


def share_text(share: int) -> str:
    return f"{share / 100:g}%"


# the rollout key --------------------------------------------------------------------------------------------


def certify_rollout_key(fleet: Identity, rollout_id: str, valid_days: float) -> bytes:
    """The fleet key's certificate for the rollout key rollout_id (a node id), valid for valid_days."""
    if not valid_days > 0:
        raise CertificateError("a rollout key's certificate must expire: give it a number of days (e.g. 365)")
    body = {"use": "rollout", "fleet": fleet.public_key, "key": public_key_of(rollout_id),
            "expires": int(time.time() + valid_days * 86400)}
    return cbor.dumps(body | {"sig": fleet.sign(KEY_PREFIX + cbor.dumps(body))})


def check_rollout_key(cert: bytes, fleet_key: bytes, now: float | None = None) -> tuple[str, int]:
    """(the rollout key's id, its expiry) of a certificate fleet_key signed that has not expired;
    CertificateError saying why not otherwise."""
    if not isinstance(cert, (bytes, bytearray)) or len(cert) > MAX_CERT:
        raise CertificateError(f"the rollout key's certificate is not bytes of at most {MAX_CERT}")
    try:
        value = cbor.loads(bytes(cert))
    except DecodeError as exc:
        raise CertificateError(f"the rollout key's certificate is malformed: {exc}") from None
    if not isinstance(value, dict) or set(value) != KEY_FIELDS or value["use"] != "rollout" or \
            not isinstance(value["key"], bytes) or len(value["key"]) != 32 or not isinstance(value["sig"], bytes):
        raise CertificateError("the rollout key's certificate does not have exactly use = rollout, fleet, key, "
                               "expires and sig")
    if value["fleet"] != fleet_key:
        raise CertificateError("the rollout key is certified by another fleet")
    expires = value["expires"]
    if not isinstance(expires, int) or expires <= (time.time() if now is None else now):
        raise CertificateError("the rollout key's certificate has expired (certify a new one with `hearth fleet "
                               "rollout-key`)")
    body = {k: value[k] for k in ("use", "fleet", "key", "expires")}
    if not verify(node_id_of(fleet_key), KEY_PREFIX + cbor.dumps(body), value["sig"]):
        raise CertificateError("the rollout key's certificate is not signed by the fleet key")
    return node_id_of(value["key"]), expires


# serializing ------------------------------------------------------------------------------------------------


def _rollout_body(r: Rollout) -> dict:
    return {"t": "rollout", "id": r.id, "seq": r.seq, "time": r.time, "url": r.url, "sha256": r.sha256,
            "version": r.version, "waves": list(r.waves), "halt": r.halt, "wave": r.wave, "state": r.state,
            "failed": list(r.failed), "reason": r.reason, "key": r.key}


def _report_body(r: Report) -> dict:
    return {"t": "report", "node": r.node, "seq": r.seq, "time": r.time, "rollout": r.rollout, "state": r.state,
            "version": r.version, "slot": r.slot, "detail": r.detail, "cert": r.cert}


def sign_rollout(rollout: Rollout, key: Identity) -> bytes:
    """The signed bytes of a rollout record (checked as a device would read it, but for the certificate)."""
    body = _rollout_body(rollout)
    data = cbor.dumps(body | {"sig": key.sign(ROLLOUT_PREFIX + cbor.dumps(body))})
    parse_rollout(data)
    return data


def sign_report(report: Report, identity: Identity) -> bytes:
    if report.node != identity.node_id:
        raise RecordError("a node signs only reports that name itself")
    body = _report_body(report)
    data = cbor.dumps(body | {"sig": identity.sign(REPORT_PREFIX + cbor.dumps(body))})
    parse_report(data)
    return data


# parsing ----------------------------------------------------------------------------------------------------


def _int(value, name, high=_U63) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise RecordError(f"{name} must be a whole number from 0 to {high}")
    return value


def _text(value, name, limit=32, pattern=TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit or not pattern.match(value):
        raise RecordError(f"{name} must be at most {limit} printable characters")
    return value


def _load(data, limit: int, fields: set, kind: str) -> dict:
    if not isinstance(data, (bytes, bytearray)) or len(data) > limit:
        raise RecordError(f"a {kind} record is at most {limit} bytes")
    try:
        value = cbor.loads(bytes(data))
    except DecodeError as exc:
        raise RecordError(f"not a {kind} record: {exc}") from None
    if not isinstance(value, dict) or value.get("t") != kind or set(value) != fields:
        raise RecordError(f"a {kind} record has exactly the keys {', '.join(sorted(fields))}")
    if cbor.dumps(value) != bytes(data):   # one encoding per record: what was signed is what is stored
        raise RecordError(f"the {kind} record is not in canonical DAG-CBOR")
    if not isinstance(value["sig"], bytes) or len(value["sig"]) != 64:
        raise RecordError(f"the {kind} record has no signature", "unsigned")
    return value


def _signed_part(value: dict) -> bytes:
    return cbor.dumps({k: v for k, v in value.items() if k != "sig"})


def parse_rollout(data: bytes) -> tuple[Rollout, dict]:
    """The rollout record in data, its form checked, and the decoded map (for verify_rollout); RecordError."""
    value = _load(data, MAX_ROLLOUT, ROLLOUT_FIELDS, "rollout")
    if not isinstance(value["id"], str) or not ROLLOUT_ID.match(value["id"]):
        raise RecordError("a rollout's id is 16 lower-case hex digits")
    if not isinstance(value["url"], str) or len(value["url"]) > MAX_URL or not URL.match(value["url"]):
        raise RecordError(f"a rollout's url is an http(s):// URL of at most {MAX_URL} characters")
    if not isinstance(value["sha256"], bytes) or len(value["sha256"]) != 32:
        raise RecordError("a rollout's sha256 is 32 bytes")
    waves = check_waves(value["waves"])
    if value["state"] not in STATES:
        raise RecordError(f"a rollout's state is one of {', '.join(STATES)}")
    failed = value["failed"]
    if not isinstance(failed, list) or len(failed) > MAX_FAILED:
        raise RecordError(f"a rollout names at most {MAX_FAILED} failed nodes")
    try:
        for node in failed:
            check_node_id(node)
    except DecodeError as exc:
        raise RecordError(f"failed: {exc}") from None
    if not isinstance(value["key"], bytes) or len(value["key"]) > MAX_CERT:
        raise RecordError(f"a rollout's key certificate is at most {MAX_CERT} bytes")
    rollout = Rollout(value["id"], _int(value["seq"], "seq"), _int(value["time"], "time"), value["url"],
                      value["sha256"], _text(value["version"], "version"), waves,
                      _int(value["halt"], "halt", WHOLE), _int(value["wave"], "wave", len(waves) - 1),
                      value["state"], tuple(failed), _text(value["reason"], "reason", MAX_DETAIL), value["key"])
    return rollout, value


def read_rollout(data: bytes, fleet_key: bytes, now: float | None = None) -> Rollout:
    """A rollout record that a key the fleet certified signed (and whose certificate has not expired), not
    from the future; RecordError saying why not ("not certified", "unsigned", "stale", "malformed")."""
    rollout, value = parse_rollout(data)
    try:
        signer, _ = check_rollout_key(rollout.key, fleet_key, now)
    except CertificateError as exc:
        raise RecordError(f"not a rollout key of this fleet: {exc}", "not certified") from None
    if not verify(signer, ROLLOUT_PREFIX + _signed_part(value), value["sig"]):
        raise RecordError("the rollout record is not signed by its rollout key", "unsigned")
    if rollout.time > (time.time() if now is None else now) + MAX_SKEW:
        raise RecordError("the rollout record's time is ahead of this node's clock", "stale")
    return rollout


def parse_report(data: bytes) -> Report:
    """A report with its form and its node's signature checked (not yet its certificate: check_report)."""
    value = _load(data, MAX_REPORT, REPORT_FIELDS, "report")
    try:
        check_node_id(value["node"])
    except DecodeError as exc:
        raise RecordError(f"node: {exc}") from None
    if not isinstance(value["rollout"], str) or not ROLLOUT_ID.match(value["rollout"]):
        raise RecordError("a report names its rollout by its 16 hex digits")
    if value["state"] not in REPORTS:
        raise RecordError(f"a report's state is one of {', '.join(REPORTS)}")
    if not isinstance(value["cert"], bytes) or len(value["cert"]) > MAX_CERT:
        raise RecordError(f"cert must be at most {MAX_CERT} bytes")
    report = Report(value["node"], _int(value["seq"], "seq"), _int(value["time"], "time"), value["rollout"],
                    value["state"], _text(value["version"], "version"), _text(value["slot"], "slot", 8),
                    _text(value["detail"], "detail", MAX_DETAIL), value["cert"])
    if not verify(report.node, REPORT_PREFIX + _signed_part(value), value["sig"]):
        raise RecordError("the report is not signed by the node it names", "unsigned")
    return report


def check_report(report: Report, topic: str, fleet_key: bytes, now: float | None = None) -> None:
    """Whether a report may be counted as it came on topic: it names the topic's node and carries that node's
    certificate from the fleet; RecordError saying why not."""
    if topic.rsplit("/", 1)[-1] != report.node:
        raise RecordError("the report names another node than its topic", "forged")
    try:
        read_certificate(report.cert, fleet_key, report.node, now)
    except CertificateError as exc:
        raise RecordError(f"not certified by the fleet: {exc}", "not certified") from None
