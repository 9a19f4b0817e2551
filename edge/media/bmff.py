"""ISO-BMFF (MP4) boxes as pure functions: just enough of CMAF to cut fragments into segments and describe them.

A fragmented MP4 is `ftyp moov` (the init segment) followed by `moof mdat` pairs (fragments). The packager
reads what FFmpeg's muxer writes through these functions: where each top-level box ends, a track's timescale
and codec string from the init segment, and a fragment's decode time and duration from its `moof`.
Every function raises DecodeError, saying what is wrong, on bytes that are not what ISO/IEC 14496-12 allows.
"""

import struct
from dataclasses import dataclass

from edge.errors import DecodeError

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"edts", b"dinf"}
MAX_BOX = 1 << 31


@dataclass(frozen=True)
class Box:
    type: bytes
    start: int       # offset of the box header in the buffer
    body: int        # offset of the payload
    end: int


def box_at(buf, offset: int) -> Box | None:
    """The box starting at offset, or None if buf does not yet hold all of it."""
    if len(buf) - offset < 8:
        return None
    size, kind = struct.unpack_from(">I4s", buf, offset)
    header = 8
    if size == 1:
        if len(buf) - offset < 16:
            return None
        size = struct.unpack_from(">Q", buf, offset + 8)[0]
        header = 16
    elif size == 0:
        raise DecodeError(f"box {kind!r} at {offset} runs to the end of the file; a fragmented MP4 needs "
                          "every box sized")
    if size < header or size > MAX_BOX:
        raise DecodeError(f"box {kind!r} at {offset} has an impossible size {size}")
    if not all(32 <= c < 127 for c in kind):
        raise DecodeError(f"bytes at {offset} are not an MP4 box (type {kind!r})")
    if len(buf) - offset < size:
        return None
    return Box(kind, offset, offset + header, offset + size)


def boxes(buf, start: int = 0, end: int | None = None):
    """Every box in buf[start:end], in order; a truncated box is an error."""
    end = len(buf) if end is None else end
    view = memoryview(buf)[:end]
    offset = start
    while offset < end:
        box = box_at(view, offset)
        if box is None:
            raise DecodeError(f"truncated MP4 box at {offset} ({end - offset} bytes left)")
        yield box
        offset = box.end


def find(buf, path: list[bytes], start: int = 0, end: int | None = None) -> Box | None:
    """The first box along a path of types (e.g. [b'moov', b'trak', b'mdia', b'mdhd'])."""
    for box in boxes(buf, start, end):
        if box.type == path[0]:
            if len(path) == 1:
                return box
            if box.type in CONTAINERS:
                found = find(buf, path[1:], box.body, box.end)
                if found:
                    return found
    return None


def _need(box: Box, n: int, what: str):
    if box.end - box.body < n:
        raise DecodeError(f"{box.type.decode()} box too short for {what}")


@dataclass(frozen=True)
class Track:
    track_id: int
    timescale: int
    handler: str          # 'vide' or 'soun'
    codec: str            # RFC 6381 string: 'avc1.64001f', 'mp4a.40.2'
    width: int = 0
    height: int = 0
    default_duration: int = 0


def parse_init(buf) -> Track:
    """The one track of a CMAF init segment (ftyp + moov)."""
    moov = find(buf, [b"moov"])
    if moov is None:
        raise DecodeError("no moov box: this is not an MP4 init segment")
    trak = find(buf, [b"trak"], moov.body, moov.end)
    if trak is None:
        raise DecodeError("the init segment has no track")
    tkhd = find(buf, [b"tkhd"], trak.body, trak.end)
    mdhd = find(buf, [b"mdia", b"mdhd"], trak.body, trak.end)
    hdlr = find(buf, [b"mdia", b"hdlr"], trak.body, trak.end)
    stsd = find(buf, [b"mdia", b"minf", b"stbl", b"stsd"], trak.body, trak.end)
    if not (tkhd and mdhd and hdlr and stsd):
        raise DecodeError("the track lacks tkhd, mdhd, hdlr or stsd")
    _need(tkhd, 24, "a track id")
    version = buf[tkhd.body]
    track_id = struct.unpack_from(">I", buf, tkhd.body + (20 if version == 1 else 12))[0]
    _need(mdhd, 24, "a timescale")
    version = buf[mdhd.body]
    _need(mdhd, 32 if version == 1 else 24, "a timescale")
    timescale = struct.unpack_from(">I", buf, mdhd.body + (20 if version == 1 else 12))[0]
    if timescale == 0:
        raise DecodeError("the track's timescale is 0")
    _need(hdlr, 12, "a handler")
    handler = bytes(buf[hdlr.body + 8:hdlr.body + 12]).decode("latin-1")
    _need(stsd, 16, "a sample entry")
    entry = box_at(buf, stsd.body + 8)
    if entry is None or entry.end > stsd.end:
        raise DecodeError("the sample description is truncated")
    width = height = 0
    if entry.type in (b"avc1", b"avc3"):
        _need(entry, 78, "a visual sample entry")
        width, height = struct.unpack_from(">HH", buf, entry.body + 24)
        avcc = find(buf, [b"avcC"], entry.body + 78, entry.end)
        if avcc is None:
            raise DecodeError("an avc1 track without an avcC box")
        _need(avcc, 4, "a profile and level")
        profile, compat, level = buf[avcc.body + 1], buf[avcc.body + 2], buf[avcc.body + 3]
        codec = f"{entry.type.decode()}.{profile:02x}{compat:02x}{level:02x}"
    elif entry.type == b"mp4a":
        codec = "mp4a.40." + str(_aac_object_type(buf, entry))
    else:
        codec = entry.type.decode("latin-1")
    default_duration = 0
    trex = find(buf, [b"mvex", b"trex"], moov.body, moov.end)
    if trex is not None:
        _need(trex, 16, "default durations")
        default_duration = struct.unpack_from(">I", buf, trex.body + 12)[0]
    return Track(track_id, timescale, handler, codec, width, height, default_duration)


def _aac_object_type(buf, entry: Box) -> int:
    """The audio object type in the esds DecoderSpecificInfo (2 = AAC-LC); 2 if it cannot be found."""
    esds = find(buf, [b"esds"], entry.body + 28, entry.end)
    if esds is None:
        return 2
    data = bytes(buf[esds.body + 4:esds.end])
    i = 0
    while i < len(data):        # descriptors: tag, 1-4 length bytes; DecoderSpecificInfo has tag 5
        tag = data[i]
        i += 1
        length = 0
        for _ in range(4):
            if i >= len(data):
                return 2
            b = data[i]
            i += 1
            length = (length << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        if tag == 3:
            i += 3                  # ES_ID, flags
            continue
        if tag == 4:
            i += 13                 # objectTypeIndication .. avgBitrate
            continue
        if tag == 5 and i < len(data):
            return max(1, data[i] >> 3)
        i += length
    return 2


@dataclass(frozen=True)
class Fragment:
    decode_time: int     # baseMediaDecodeTime, in the track's timescale
    duration: int        # sum of sample durations
    samples: int
    starts_with_sync: bool


def parse_moof(buf, start: int, end: int, default_duration: int = 0) -> Fragment:
    """Decode time, duration and sample count of the first track fragment in a moof box."""
    traf = find(buf, [b"traf"], start, end)
    if traf is None:
        raise DecodeError("a moof without a traf")
    tfhd = find(buf, [b"tfhd"], traf.body, traf.end)
    tfdt = find(buf, [b"tfdt"], traf.body, traf.end)
    if tfhd is None or tfdt is None:
        raise DecodeError("a track fragment without tfhd or tfdt (CMAF requires both)")
    _need(tfhd, 8, "flags")
    flags = int.from_bytes(buf[tfhd.body + 1:tfhd.body + 4], "big")
    off = tfhd.body + 8
    if flags & 0x01:
        off += 8
    if flags & 0x02:
        off += 4
    frag_default = default_duration
    if flags & 0x08:
        if off + 4 > tfhd.end:
            raise DecodeError("tfhd too short for its default sample duration")
        frag_default = struct.unpack_from(">I", buf, off)[0]
        off += 4
    default_flags = None
    if flags & 0x10:
        off += 4
    if flags & 0x20:
        if off + 4 > tfhd.end:
            raise DecodeError("tfhd too short for its default sample flags")
        default_flags = struct.unpack_from(">I", buf, off)[0]
    _need(tfdt, 8, "a decode time")
    if buf[tfdt.body] == 1:
        _need(tfdt, 12, "a 64-bit decode time")
        decode_time = struct.unpack_from(">Q", buf, tfdt.body + 4)[0]
    else:
        decode_time = struct.unpack_from(">I", buf, tfdt.body + 4)[0]
    duration = samples = 0
    sync = True
    first = True
    for box in boxes(buf, traf.body, traf.end):
        if box.type != b"trun":
            continue
        _need(box, 8, "a sample count")
        tflags = int.from_bytes(buf[box.body + 1:box.body + 4], "big")
        count = struct.unpack_from(">I", buf, box.body + 4)[0]
        off = box.body + 8 + (4 if tflags & 0x01 else 0)
        first_flags = None
        if tflags & 0x04:
            _need(box, off - box.body + 4, "first sample flags")
            first_flags = struct.unpack_from(">I", buf, off)[0]
            off += 4
        per = 4 * bin(tflags & 0xF00).count("1")
        if count > (box.end - off) // max(per, 1) and per:
            raise DecodeError(f"trun claims {count} samples but holds room for {(box.end - off) // per}")
        for i in range(count):
            sample_flags = None
            if tflags & 0x100:
                duration += struct.unpack_from(">I", buf, off)[0]
                off += 4
            else:
                duration += frag_default
            if tflags & 0x200:
                off += 4
            if tflags & 0x400:
                sample_flags = struct.unpack_from(">I", buf, off)[0]
                off += 4
            if tflags & 0x800:
                off += 4
            if first and i == 0:
                f = first_flags if first_flags is not None else sample_flags
                f = f if f is not None else default_flags
                sync = f is None or not (f >> 16) & 1       # sample_is_non_sync_sample
        if count:
            first = False
        samples += count
    return Fragment(decode_time, duration, samples, sync)


def shift_decode_time(moof: bytes, ticks: int) -> bytes:
    """The moof with `ticks` added to every track fragment's baseMediaDecodeTime (same length: a 32-bit tfdt
    that would overflow is an error, not a resize, because trun data offsets point past the moof)."""
    out = bytearray(moof)
    top = box_at(out, 0)
    if top is None or top.type != b"moof":
        raise DecodeError("not a moof box")
    for traf in boxes(out, top.body, top.end):
        if traf.type != b"traf":
            continue
        tfdt = find(out, [b"tfdt"], traf.body, traf.end)
        if tfdt is None:
            raise DecodeError("a track fragment without tfdt")
        _need(tfdt, 8, "a decode time")
        if out[tfdt.body] == 1:
            _need(tfdt, 12, "a 64-bit decode time")
            value = struct.unpack_from(">Q", out, tfdt.body + 4)[0] + ticks
            if not 0 <= value < 1 << 64:
                raise DecodeError("shifted decode time out of range")
            struct.pack_into(">Q", out, tfdt.body + 4, value)
        else:
            value = struct.unpack_from(">I", out, tfdt.body + 4)[0] + ticks
            if not 0 <= value < 1 << 32:
                raise DecodeError("shifted decode time does not fit a version 0 tfdt")
            struct.pack_into(">I", out, tfdt.body + 4, value)
    return bytes(out)
