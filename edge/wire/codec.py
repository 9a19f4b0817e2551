"""Node-to-node messages (protocol version 1) to and from ZeroMQ multipart frames. See docs/protocol.md.

frame 0: header, 4 bytes: b"HE", version, message type
frame 1: body, a DAG-CBOR map (at most MAX_BODY bytes)
frame 2: payload, the block bytes (only Block, Blocks, Put and ProbeData; at most the configured frame limit), a
         chunk of a piece (StorePiece, Transfer, Piece) or a manifest (Manifest); edge/wire/pieces.py reads those

Get, Block, GetMany and Blocks are written and read in their canonical layout by edge/wire/canonical.py; every
other message, and a body in any other layout, takes the general DAG-CBOR path here.
"""

import struct

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.ipld.cid import cid_from_bytes
from edge.wire.canonical import (NotCanonical, block_body, blocks_body, get_body, get_many_body, read_block_fields,
                                 pack_bits, read_blocks, read_get, read_get_many, unpack_bits)
from edge.wire.messages import MAX_STREAMS, ListStreams, Streams
from edge.wire.streamentry import MAX_ENTRY
from edge.wire.live import LIVE_MESSAGES, live_body, parse_live
from edge.wire.messages import (MAGIC, MAX_BODY, MAX_CERT, MAX_FREE, MAX_GET_MANY, MAX_HAVE, MAX_ID, MAX_PAYLOAD,
                                MAX_PROBE, MAX_TEXT, PROTOCOL_VERSION, SUPPORTED_VERSIONS, TYPES, WITH_PAYLOAD, Block,
                                Blocks, Error, ErrorCode, Get, GetMany, Have, HaveReply, Hello, Probe, ProbeData, Put,
                                PutOk, Welcome)
from edge.wire.jobs import (JOB_ID, JOB_MESSAGES, MAX_DURATION_MS, MAX_SLOTS, MAX_SOURCE, MAX_SPEED, SIGNATURE, STATES,
                            Encoders, EncodersInfo, JobCancel, JobQuery, JobState, JobSubmit)
from edge.wire.jobs import LIVE_SOURCE, MAX_CHUNK, MAX_HEADER, MAX_OUTPUT, LiveOutput, LivePull, LiveSubmit
from edge.wire.jobs import MAX_FEED, LiveFeed
from edge.wire.pieces import PIECE_TYPES, parse_piece, piece_body

_HEADERS = {(v, t): MAGIC + bytes([v, t]) for v in SUPPORTED_VERSIONS for t in TYPES}




def _kept(data):
    """A payload as the message keeps it: bytes, or a read-only memoryview (a received frame, not copied); any
    other buffer is copied, so a message never changes under its reader."""
    if type(data) is bytes or type(data) is memoryview and data.readonly:
        return data
    return bytes(data)


def _block(fields, data, max_payload: int) -> Block:
    rid, cid, offset, total = fields
    if len(data) > max_payload:
        raise DecodeError(f"Block: payload of {len(data)} bytes is over the {max_payload}-byte limit")
    if offset + len(data) > total:
        raise DecodeError("Block: the payload runs past the block's total size")
    return Block(rid, cid, offset, total, _kept(data))


def _either(fast, body, general, cls):
    """fast(body) for a body in the canonical layout, else general(_Body) of the decoded map: the general path
    accepts or refuses what the fast one cannot read, with its own messages."""
    try:
        return fast(bytes(body))
    except (NotCanonical, DecodeError, IndexError):
        return general(_Body(cls.__name__, cbor.loads(body)))


def _get_many(rid, raws) -> GetMany:
    if not 1 <= len(raws) <= MAX_GET_MANY:
        raise DecodeError(f"GetMany: asks for {len(raws)} CIDs; 1 to {MAX_GET_MANY} are allowed")
    if not all(type(r) is bytes for r in raws):
        raise DecodeError("GetMany: cids must be byte strings")
    if isinstance(rid, bool) or not 0 <= rid <= MAX_ID - len(raws) + 1:
        raise DecodeError(f"GetMany: id {rid} is out of range for {len(raws)} requests")
    return GetMany(rid, tuple(map(cid_from_bytes, raws)))


def _blocks(ids: bytes, sizes: bytes, data, max_payload: int) -> Blocks:
    n = len(ids) // 8
    if not 1 <= n <= MAX_GET_MANY or len(ids) != 8 * n or len(sizes) != 4 * n:
        raise DecodeError(f"Blocks: 1 to {MAX_GET_MANY} entries, 8 bytes of id and 4 of size each")
    if len(data) > max_payload:
        raise DecodeError(f"Blocks: payload of {len(data)} bytes is over the {max_payload}-byte limit")
    ids, sizes = struct.unpack(f">{n}Q", ids), struct.unpack(f">{n}L", sizes)
    if max(ids) > MAX_ID:
        raise DecodeError("Blocks: an id is out of range")
    if sum(sizes) != len(data):
        raise DecodeError(f"Blocks: the sizes add up to {sum(sizes)} bytes, the payload has {len(data)}")
    return Blocks(ids, sizes, _kept(data))


def serialize_message(msg, version: int = PROTOCOL_VERSION) -> list[bytes]:
    """The frames of a message."""
    header = _HEADERS.get((version, msg.TYPE)) or MAGIC + bytes([version, msg.TYPE])
    kind = type(msg)
    if kind is Block:
        return [header, block_body(msg), msg.data]
    if kind is Get:
        return [header, get_body(msg)]
    if kind is Blocks:
        return [header, blocks_body(msg), msg.data]
    if kind is GetMany:
        return [header, get_many_body(msg)]
    if isinstance(msg, Hello):
        body = {"node": msg.node, "versions": list(msg.versions), "caps": list(msg.caps)}
        if msg.cert is not None:
            body["cert"] = msg.cert
        if msg.free is not None:
            body["free"] = msg.free
        if msg.operator:
            body["operator"] = msg.operator
    elif isinstance(msg, Welcome):
        body = {"node": msg.node, "version": msg.version, "caps": list(msg.caps)}
        if msg.cert is not None:
            body["cert"] = msg.cert
        if msg.free is not None:
            body["free"] = msg.free
        if msg.operator:
            body["operator"] = msg.operator
    elif isinstance(msg, Have):
        body = {"id": msg.id, "cids": [bytes(c) for c in msg.cids]}
    elif isinstance(msg, HaveReply):
        body = {"id": msg.id, "n": len(msg.have), "have": pack_bits(msg.have)}
    elif isinstance(msg, Get):
        body = {"id": msg.id, "cid": bytes(msg.cid), "offset": msg.offset}
        if msg.length is not None:
            body["length"] = msg.length
    elif isinstance(msg, Block):
        body = {"id": msg.id, "cid": bytes(msg.cid), "offset": msg.offset, "total": msg.total}
    elif isinstance(msg, Put):
        body = {"id": msg.id, "cid": bytes(msg.cid)}
    elif isinstance(msg, PutOk):
        body = {"id": msg.id, "stored": msg.stored}
    elif isinstance(msg, Probe):
        body = {"id": msg.id, "size": msg.size}
    elif isinstance(msg, ProbeData):
        body = {"id": msg.id}
    elif isinstance(msg, ListStreams):
        body = {"id": msg.id, "start": msg.start, "name": msg.name}
    elif isinstance(msg, Streams):
        body = {"id": msg.id, "entries": list(msg.entries), "total": msg.total}
    elif isinstance(msg, Error):
        body = {"id": msg.id, "code": int(msg.code), "message": msg.message[:MAX_TEXT]}
    elif isinstance(msg, JOB_MESSAGES):
        body = job_body(msg)
    elif kind in PIECE_TYPES:
        body = piece_body(msg)
    elif isinstance(msg, LIVE_MESSAGES):
        body = live_body(msg)
    else:
        raise TypeError(f"not a message: {msg!r}")
    frames = [header, cbor.dumps(body)]
    if isinstance(msg, WITH_PAYLOAD):
        frames.append(msg.data)
    return frames


class _Body:
    """Typed access to a decoded body, with errors that name the field."""

    def __init__(self, kind: str, value):
        if not isinstance(value, dict):
            raise DecodeError(f"{kind}: the body is not a map")
        self.kind, self.value = kind, value

    def get(self, key, types, required=True, default=None):
        if key not in self.value:
            if required:
                raise DecodeError(f"{self.kind}: field {key!r} is missing")
            return default
        v = self.value[key]
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            raise DecodeError(f"{self.kind}: field {key!r} has the wrong type")
        return v

    def uint(self, key, required=True, default=None, high=MAX_ID):
        v = self.get(key, (int,), required, default)
        if v is not None and not 0 <= v <= high:
            raise DecodeError(f"{self.kind}: field {key!r} = {v} is out of range")
        return v

    def text(self, key, required=True, default=None):
        v = self.get(key, (str,), required, default)
        if v is not None and len(v) > MAX_TEXT:
            raise DecodeError(f"{self.kind}: field {key!r} is longer than {MAX_TEXT} characters")
        return v

    def texts(self, key, limit=64):
        v = self.get(key, (list,), False, [])
        if len(v) > limit or not all(isinstance(x, str) and len(x) <= 64 for x in v):
            raise DecodeError(f"{self.kind}: field {key!r} must be at most {limit} short strings")
        return tuple(v)

    def cid(self, key):
        return cid_from_bytes(self.get(key, (bytes,)))

    def cert(self):
        cert = self.get("cert", (bytes,), required=False)
        if cert is not None and len(cert) > MAX_CERT:
            raise DecodeError(f"{self.kind}: cert is over {MAX_CERT} bytes")
        return cert


def parse_message(frames, max_payload: int = MAX_PAYLOAD):
    """The message in a list of frames; DecodeError saying what is wrong for anything else."""
    if not isinstance(frames, (list, tuple)) or not 2 <= len(frames) <= 3:
        count = len(frames) if isinstance(frames, (list, tuple)) else "?"
        raise DecodeError(f"a message has 2 or 3 frames, got {count}")
    header, body = bytes(frames[0]), frames[1]
    if len(header) != 4 or header[:2] != MAGIC:
        raise DecodeError("not a Hearth message (bad header)")
    version, kind = header[2], header[3]
    if version not in SUPPORTED_VERSIONS:
        raise DecodeError(f"protocol version {version} is not supported (this node speaks "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    cls = TYPES.get(kind)
    if cls is None:
        raise DecodeError(f"unknown message type {kind}")
    if len(body) > MAX_BODY:
        raise DecodeError(f"{cls.__name__}: body of {len(body)} bytes is over the {MAX_BODY}-byte limit")
    has_payload = len(frames) == 3
    if has_payload != (cls in WITH_PAYLOAD):
        raise DecodeError(f"{cls.__name__}: {'unexpected' if has_payload else 'missing'} payload frame")
    if cls is GetMany:
        return _get_many(*_either(read_get_many, body, lambda b: (b.get("id", (int,)), b.get("cids", (list,))),
                                  cls))
    if cls is Blocks:
        ids, sizes = _either(read_blocks, body, lambda b: (b.get("ids", (bytes,)), b.get("sizes", (bytes,))), cls)
        return _blocks(ids, sizes, frames[2], max_payload)
    if cls is Get:
        return _either(read_get, body, lambda b: Get(b.uint("id"), b.cid("cid"), b.uint("offset", False, 0),
                                                      b.uint("length", False, None)), cls)
    if cls is Block:
        fields = _either(read_block_fields, body,
                         lambda b: (b.uint("id"), b.cid("cid"), b.uint("offset"), b.uint("total")), cls)
        return _block(fields, frames[2], max_payload)
    b = _Body(cls.__name__, cbor.loads(body))
    if cls in PIECE_TYPES:
        return parse_piece(cls, b, frames, max_payload)
    if cls is Hello:
        versions = b.get("versions", (list,))
        if not versions or len(versions) > 16 or not all(isinstance(v, int) and 0 < v < 256 for v in versions):
            raise DecodeError("Hello: versions must list 1 to 16 protocol versions")
        return Hello(b.text("node"), tuple(versions), b.texts("caps"), b.cert(), b.uint("free", False, None, MAX_FREE),
                     _operator(b))
    if cls is Welcome:
        return Welcome(b.text("node"), b.uint("version", high=255), b.texts("caps"), b.cert(),
                       b.uint("free", False, None, MAX_FREE), _operator(b))
    if cls is Have:
        raw = b.get("cids", (list,))
        if len(raw) > MAX_HAVE:
            raise DecodeError(f"Have: {len(raw)} CIDs is over the limit of {MAX_HAVE}")
        if not all(isinstance(c, bytes) for c in raw):
            raise DecodeError("Have: cids must be byte strings")
        return Have(b.uint("id"), tuple(map(cid_from_bytes, raw)))
    if cls is HaveReply:
        n = b.uint("n", high=MAX_HAVE)
        return HaveReply(b.uint("id"), unpack_bits(b.get("have", (bytes,)), n, "HaveReply"))
    if cls is Put:
        data = frames[2]
        if len(data) > max_payload:
            raise DecodeError(f"Put: payload of {len(data)} bytes is over the {max_payload}-byte limit")
        return Put(b.uint("id"), b.cid("cid"), bytes(data))
    if cls is PutOk:
        return PutOk(b.uint("id"), b.get("stored", (bool,)))
    if cls is Probe:
        return Probe(b.uint("id"), b.uint("size", high=MAX_PROBE))
    if cls is ListStreams:
        name = b.text("name", False, "")
        if len(name) > 64:
            raise DecodeError("ListStreams: a stream name is at most 64 characters")
        return ListStreams(b.uint("id"), b.uint("start", high=MAX_STREAMS), name)
    if cls is Streams:
        entries = b.get("entries", (list,))
        if len(entries) > MAX_STREAMS or not all(type(e) is bytes and len(e) <= MAX_ENTRY for e in entries):
            raise DecodeError(f"Streams: at most {MAX_STREAMS} entries of at most {MAX_ENTRY} bytes each")
        return Streams(b.uint("id"), tuple(entries), b.uint("total", high=MAX_STREAMS))
    if cls is ProbeData:
        data = frames[2]
        if len(data) > MAX_PROBE:
            raise DecodeError(f"ProbeData: payload of {len(data)} bytes is over the {MAX_PROBE}-byte limit")
        return ProbeData(b.uint("id"), _kept(data))
    if cls in JOB_MESSAGES:
        return parse_job(cls, b, frames)
    if cls in LIVE_MESSAGES:
        return parse_live(cls, b)
    code = b.uint("code", high=255)
    try:
        code = ErrorCode(code)
    except ValueError:
        code = ErrorCode.INTERNAL
    return Error(b.uint("id"), code, b.text("message"))


# transcoding for neighbours (edge/wire/jobs.py) ------------------------------------------------------------------

def job_body(msg) -> dict:
    if isinstance(msg, Encoders):
        return {"id": msg.id}
    if isinstance(msg, EncodersInfo):
        return {"id": msg.id, "encoder": msg.encoder, "hardware": msg.hardware, "slots": msg.slots, "free": msg.free,
                "speed": msg.speed, "accepts": msg.accepts}
    if isinstance(msg, JobSubmit):
        return {"id": msg.id, "job": msg.job, "source": bytes(msg.source), "size": msg.size,
                "duration": msg.duration_ms, "ladder": msg.ladder, "segment": msg.segment_ms, "encoder": msg.encoder,
                "preset": msg.preset, "name": msg.name}
    if isinstance(msg, (JobQuery, JobCancel)):
        return {"id": msg.id, "job": msg.job}
    if isinstance(msg, LiveSubmit):
        return {"id": msg.id, "job": msg.job, "source": msg.source, "size": msg.size, "duration": msg.duration_ms,
                "ladder": msg.ladder, "segment": msg.segment_ms, "encoder": msg.encoder, "preset": msg.preset,
                "start": msg.start_ms}
    if isinstance(msg, LivePull):
        return {"id": msg.id, "job": msg.job, "seq": msg.seq, "offset": msg.offset}
    if isinstance(msg, LiveOutput):
        return {"id": msg.id, "job": msg.job, "seq": msg.seq, "total": msg.total, "offset": msg.offset,
                "header": msg.header, "signature": msg.signature}
    if isinstance(msg, LiveFeed):
        return {"id": msg.id, "job": msg.job, "seq": msg.seq, "end": msg.end}
    body = {"id": msg.id, "job": msg.job, "state": msg.state, "done": msg.done_ms, "speed": msg.speed}
    if msg.output is not None:
        body["output"] = bytes(msg.output)
    if msg.signature is not None:
        body["signature"] = msg.signature
    if msg.message:
        body["message"] = msg.message[:MAX_TEXT]
    return body


def _job_id(b: "_Body") -> str:
    job = b.text("job")
    if not JOB_ID.match(job):
        raise DecodeError(f"{b.kind}: a job id is 1 to 64 letters, digits, '-' or '_'")
    return job


def _short(b: "_Body", key: str, default=None) -> str:
    v = b.text(key, default is None, default)
    if len(v) > 64 or not v.isprintable():
        raise DecodeError(f"{b.kind}: field {key!r} must be at most 64 printable characters")
    return v


def _stream_name(b: "_Body") -> str:
    name = b.text("name", False, "stream")
    if not JOB_ID.match(name.replace(".", "_")):
        raise DecodeError(f"{b.kind}: a stream name is 1 to 64 letters, digits, '.', '-' or '_'")
    return name


def parse_job(cls, b: "_Body", frames=()):
    if cls is LiveSubmit:
        source = b.text("source")
        if not LIVE_SOURCE.match(source):
            raise DecodeError("LiveSubmit: a source is testsrc, flv or the CID of a file")
        start = b.uint("start", False, 0, MAX_DURATION_MS)
        if start and source in ("testsrc", "flv"):
            raise DecodeError("LiveSubmit: only a file source has a start offset")
        return LiveSubmit(b.uint("id"), _job_id(b), source, b.uint("size", high=MAX_SOURCE),
                          b.uint("duration", high=MAX_DURATION_MS), _short(b, "ladder"), b.uint("segment", high=60_000),
                          _short(b, "encoder", "auto"), _short(b, "preset", "veryfast"), start)
    if cls is LivePull:
        return LivePull(b.uint("id"), _job_id(b), b.uint("seq"), b.uint("offset", False, 0, MAX_OUTPUT))
    if cls is LiveOutput:
        header, signature, data = b.get("header", (bytes,)), b.get("signature", (bytes,)), frames[2]
        total, offset = b.uint("total", high=MAX_OUTPUT), b.uint("offset", high=MAX_OUTPUT)
        if len(header) > MAX_HEADER or len(signature) != SIGNATURE or len(data) > MAX_CHUNK \
                or offset + len(data) > total:
            raise DecodeError(f"LiveOutput: a header of at most {MAX_HEADER} bytes, a {SIGNATURE}-byte signature "
                              f"and at most {MAX_CHUNK} bytes inside the output's total")
        return LiveOutput(b.uint("id"), _job_id(b), b.uint("seq"), total, offset, header, signature, _kept(data))
    if cls is LiveFeed:
        data = frames[2]
        if len(data) > MAX_FEED:
            raise DecodeError(f"LiveFeed: at most {MAX_FEED} bytes of the source at once")
        return LiveFeed(b.uint("id"), _job_id(b), b.uint("seq"), b.get("end", (bool,)), _kept(data))
    if cls is Encoders:
        return Encoders(b.uint("id"))
    if cls is EncodersInfo:
        slots = b.uint("slots", high=MAX_SLOTS)
        free = b.uint("free", high=slots)
        return EncodersInfo(b.uint("id"), _short(b, "encoder"), b.get("hardware", (bool,)), slots, free,
                            b.uint("speed", high=MAX_SPEED), b.get("accepts", (bool,)))
    if cls is JobSubmit:
        return JobSubmit(b.uint("id"), _job_id(b), b.cid("source"), b.uint("size", high=MAX_SOURCE),
                         b.uint("duration", high=MAX_DURATION_MS), _short(b, "ladder"),
                         b.uint("segment", high=60_000), _short(b, "encoder", "auto"), _short(b, "preset", "veryfast"),
                         _stream_name(b))
    if cls in (JobQuery, JobCancel):
        return cls(b.uint("id"), _job_id(b))
    state = b.text("state")
    if state not in STATES:
        raise DecodeError(f"JobState: state must be one of {', '.join(STATES)}")
    output = b.get("output", (bytes,), False)
    signature = b.get("signature", (bytes,), False)
    if signature is not None and len(signature) != SIGNATURE:
        raise DecodeError(f"JobState: a signature is {SIGNATURE} bytes")
    return JobState(b.uint("id"), _job_id(b), state, b.uint("done", False, 0, MAX_DURATION_MS),
                    b.uint("speed", False, 0, MAX_SPEED), cid_from_bytes(output) if output is not None else None,
                    signature, b.text("message", False, ""))


def _operator(b) -> str:
    """A Welcome's or Hello's operator key: at most 64 characters (config.OPERATOR's bound)."""
    v = b.text("operator", False, "")
    if len(v) > 64:
        raise DecodeError(f"{b.kind}: field 'operator' is longer than 64 characters")
    return v
