"""A stream entry: what a node says of one stream it publishes, signed by its node key, so any node can list the
neighbourhood's streams and no neighbour can speak for another publisher. Pure functions, bounded.

An entry is a DAG-CBOR map with exactly these keys (parse_entry and serialize_entry are the only ways in and
out; EntryError, a DecodeError, says what is wrong):

    {"t": "stream", "name", "publisher", "root", "kind", "tracks", "seconds", "window", "ended", "duration",
     "updated", "seq", "sig"}

    name       the stream's name on its publisher (1-64 of [A-Za-z0-9._-], starting with a letter or digit)
    publisher  the node id of the node that publishes it (and signs the entry)
    root       the binary CID of the stream's directory (on demand), or of its first track's init segment (live)
    kind       "vod" or "live"
    tracks     the ladder, at most MAX_TRACKS maps {"name", "kind" ("video" | "audio"), "codec", "width",
               "height", "kbps", "fps" (frames a second × 1000), "init" (CID bytes; b"" on demand), "segments"}
               where segments is the live window: at most MAX_SEGMENTS [index, duration µs, CID bytes, size]
               (empty on demand: a stream directory lists its own segments); and, only on a live track whose
               encoder was replaced (a discontinuity), "epochs": at most MAX_EPOCHS [first segment index, epoch
               number, init CID bytes], one per epoch the window spans, both numbers going up, the first at the
               window's first segment, each at one of its segments (the track's "init" is the newest encoder's); a
               segment belongs to the last epoch that starts at or before it; the window's first epoch number is
               its EXT-X-DISCONTINUITY-SEQUENCE. Without the key (no switch, or an older publisher) the window is
               one epoch, number 0, whose init is the track's.
    seconds    the segment duration in ms; window: the live window in segments; ended: a live stream has ended
    duration   ms of an on-demand stream (0 for live)
    updated    unix seconds of the publisher's last change; seq: grows with every entry a publisher signs for
               a name (milliseconds of its wall clock, at least one more than the last)

"sig" is the publisher's Ed25519 signature of "hearth-stream\\0" + the DAG-CBOR map without "sig": an entry
never passes for a fleet record, a certificate or a request. An entry is at most MAX_ENTRY bytes and has one
encoding: the bytes signed are the bytes carried.
"""

import re
import time
from dataclasses import dataclass

from edge.errors import DecodeError
from edge.identity import Identity, check_node_id, verify
from edge.ipld import cbor
from edge.ipld.cid import CID, cid_from_bytes

MAX_ENTRY = 8192          # bytes of one signed entry (a live window of 3 tracks × 16 segments is ~5 KB)
MAX_TRACKS = 16
MAX_SEGMENTS = 32         # live window entries per track
MAX_SEGMENT_US = 60_000_000
MAX_EPOCHS = 4            # encoder epochs one track's window spans (~50 bytes each); a publisher cuts older ones
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
TRACK = re.compile(r"[A-Za-z0-9]{1,16}\Z")
CODEC = re.compile(r"[A-Za-z0-9.]{0,64}\Z")
KINDS = ("vod", "live")
TRACK_KINDS = ("video", "audio")
PREFIX = b"hearth-stream\0"
FIELDS = {"t", "name", "publisher", "root", "kind", "tracks", "seconds", "window", "ended", "duration", "updated",
          "seq", "sig"}
TRACK_FIELDS = {"name", "kind", "codec", "width", "height", "kbps", "fps", "init", "segments"}
EPOCHS = "epochs"         # the one optional track key: absent unless the window spans a switch of encoder
_U63 = (1 << 63) - 1
_U32 = (1 << 32) - 1


class EntryError(DecodeError):
    """A stream entry is malformed, too large, or not signed by the publisher it names."""


@dataclass(frozen=True)
class Segment:
    index: int
    duration_us: int
    cid: CID
    size: int


@dataclass(frozen=True)
class Epoch:
    first: int                # the index of its first segment in the window
    number: int               # discontinuities before it (EXT-X-DISCONTINUITY-SEQUENCE where it starts a window)
    init: CID


@dataclass(frozen=True)
class TrackEntry:
    name: str
    kind: str
    codec: str = ""
    width: int = 0
    height: int = 0
    kbps: int = 0
    fps: int = 0                              # frames a second × 1000
    init: CID | None = None                   # live: the init segment
    segments: tuple[Segment, ...] = ()        # live: the window
    epochs: tuple[Epoch, ...] = ()            # live, after a switch of encoder: the epochs the window spans

    def epoch_of(self, index: int) -> Epoch | None:
        """The epoch segment index belongs to; None where the window is one epoch (number 0, the track's init)."""
        return next((e for e in reversed(self.epochs) if e.first <= index), None)

    @property
    def inits(self) -> list[CID]:
        """Every init segment the window refers to (the track's, and each epoch's)."""
        out = [e.init for e in self.epochs if e.init != self.init]
        return ([self.init] if self.init is not None else []) + out


@dataclass(frozen=True)
class StreamEntry:
    name: str
    publisher: str
    root: CID
    kind: str
    tracks: tuple[TrackEntry, ...] = ()
    seconds: int = 0          # ms
    window: int = 0
    ended: bool = False
    duration: int = 0         # ms
    updated: int = 0
    seq: int = 0

    @property
    def live(self) -> bool:
        return self.kind == "live"


def next_seq(last: int, now: float | None = None) -> int:
    """A sequence number above last: the wall clock's milliseconds, so a restarted node still goes up."""
    return max(last + 1, int((time.time() if now is None else now) * 1000))


def _track_body(t: TrackEntry) -> dict:
    out = {"name": t.name, "kind": t.kind, "codec": t.codec, "width": t.width, "height": t.height, "kbps": t.kbps,
           "fps": t.fps, "init": bytes(t.init) if t.init is not None else b"",
           "segments": [[s.index, s.duration_us, bytes(s.cid), s.size] for s in t.segments]}
    if t.epochs:              # only then: an entry without a switch is byte for byte what older nodes take
        out[EPOCHS] = [[x.first, x.number, bytes(x.init)] for x in t.epochs]
    return out


def _body(e: StreamEntry) -> dict:
    return {"t": "stream", "name": e.name, "publisher": e.publisher, "root": bytes(e.root), "kind": e.kind,
            "tracks": [_track_body(t) for t in e.tracks],
            "seconds": e.seconds, "window": e.window, "ended": e.ended, "duration": e.duration,
            "updated": e.updated, "seq": e.seq}


def signed_size(entry: StreamEntry) -> int:
    """The bytes entry takes once signed (its map, and the signature's key and 64 bytes)."""
    return len(cbor.dumps(_body(entry))) + 70


def serialize_entry(entry: StreamEntry, identity: Identity) -> bytes:
    """The signed bytes of entry; EntryError if it breaks a bound or names another publisher (checked as a
    receiver would, so a node never publishes what its neighbours refuse)."""
    if entry.publisher != identity.node_id:
        raise EntryError("a node signs only entries of streams it publishes")
    body = _body(entry)
    data = cbor.dumps(body | {"sig": identity.sign(PREFIX + cbor.dumps(body))})
    parse_entry(data)
    return data


def _int(value, name: str, high: int = _U63) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise EntryError(f"stream entry: {name} must be a whole number from 0 to {high}")
    return value


def _text(value, name: str, pattern) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise EntryError(f"stream entry: {name} is not a valid {name}")
    return value


def _cid(value, name: str, empty: bool = False) -> CID | None:
    if empty and value == b"":
        return None
    if not isinstance(value, bytes) or len(value) > 128:
        raise EntryError(f"stream entry: {name} must be a binary CID")
    try:
        return cid_from_bytes(value)
    except DecodeError as exc:
        raise EntryError(f"stream entry: {name}: {exc}") from None


def _epochs(value, segments: list[Segment]) -> tuple[Epoch, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EPOCHS:
        raise EntryError(f"stream entry: a track's epochs are a list of 1 to {MAX_EPOCHS} epochs")
    out = []
    for x in value:
        if not isinstance(x, list) or len(x) != 3:
            raise EntryError("stream entry: an epoch is [first segment index, epoch number, init CID]")
        e = Epoch(_int(x[0], "an epoch's first index", _U32), _int(x[1], "an epoch number", _U32),
                  _cid(x[2], "an epoch's init"))
        if out and not (e.first > out[-1].first and e.number > out[-1].number):
            raise EntryError("stream entry: a track's epochs go up in both first index and number")
        out.append(e)
    indices = {s.index for s in segments}
    if not segments or out[0].first != segments[0].index or any(e.first not in indices for e in out):
        raise EntryError("stream entry: each epoch starts at a segment of the window, the first at its first")
    return tuple(out)


def _track(value) -> TrackEntry:
    if not isinstance(value, dict) or set(value) - {EPOCHS} != TRACK_FIELDS:
        raise EntryError("stream entry: a track has exactly the keys " + ", ".join(sorted(TRACK_FIELDS))
                         + f" (and {EPOCHS} after a switch of encoder)")
    segs = value["segments"]
    if not isinstance(segs, list) or len(segs) > MAX_SEGMENTS:
        raise EntryError(f"stream entry: a track lists at most {MAX_SEGMENTS} segments")
    out = []
    for s in segs:
        if not isinstance(s, list) or len(s) != 4:
            raise EntryError("stream entry: a segment is [index, duration µs, CID, size]")
        out.append(Segment(_int(s[0], "a segment index", _U32), _int(s[1], "a segment duration", MAX_SEGMENT_US),
                           _cid(s[2], "a segment CID"), _int(s[3], "a segment size", _U32)))
    if value["kind"] not in TRACK_KINDS:
        raise EntryError(f"stream entry: a track's kind is one of {', '.join(TRACK_KINDS)}")
    init = _cid(value["init"], "init", empty=True)
    epochs = _epochs(value[EPOCHS], out) if EPOCHS in value else ()
    return TrackEntry(_text(value["name"], "track name", TRACK), value["kind"], _text(value["codec"], "codec", CODEC),
                      _int(value["width"], "width", 1 << 16), _int(value["height"], "height", 1 << 16),
                      _int(value["kbps"], "kbps", 1 << 20), _int(value["fps"], "fps", 1 << 20),
                      init, tuple(out), epochs)


def parse_entry(data) -> StreamEntry:
    """The entry in data after checking its form, its bounds and its publisher's signature; EntryError saying
    what is wrong otherwise. Nothing from a neighbour is used before this."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_ENTRY:
        raise EntryError(f"a stream entry is at most {MAX_ENTRY} bytes")
    data = bytes(data)
    try:
        value = cbor.loads(data)
    except DecodeError as exc:
        raise EntryError(f"not a stream entry: {exc}") from None
    if not isinstance(value, dict) or value.get("t") != "stream" or set(value) != FIELDS:
        raise EntryError("a stream entry has exactly the keys " + ", ".join(sorted(FIELDS)))
    try:
        check_node_id(value["publisher"])
    except DecodeError as exc:
        raise EntryError(f"stream entry: publisher: {exc}") from None
    if value["kind"] not in KINDS:
        raise EntryError(f"stream entry: kind is one of {', '.join(KINDS)}")
    tracks = value["tracks"]
    if not isinstance(tracks, list) or len(tracks) > MAX_TRACKS:
        raise EntryError(f"stream entry: at most {MAX_TRACKS} tracks")
    if not isinstance(value["ended"], bool):
        raise EntryError("stream entry: ended is true or false")
    entry = StreamEntry(_text(value["name"], "name", NAME), value["publisher"], _cid(value["root"], "root"),
                        value["kind"], tuple(_track(t) for t in tracks), _int(value["seconds"], "seconds", 600_000),
                        _int(value["window"], "window", 1000), value["ended"], _int(value["duration"], "duration"),
                        _int(value["updated"], "updated"), _int(value["seq"], "seq"))
    sig = value["sig"]
    if not isinstance(sig, bytes) or len(sig) != 64 or \
            not verify(entry.publisher, PREFIX + cbor.dumps({k: v for k, v in value.items() if k != "sig"}), sig):
        raise EntryError("the stream entry is not signed by the publisher it names")
    if cbor.dumps(value) != data:   # one encoding per entry: what was signed is what is carried
        raise EntryError("the stream entry is not in canonical DAG-CBOR")
    return entry
