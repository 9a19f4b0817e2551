"""UnixFS Data messages (the payload of a DAG-PB node that makes it a file, directory, symlink or shard).

message Data { required DataType Type = 1; optional bytes Data = 2; optional uint64 filesize = 3;
               repeated uint64 blocksizes = 4; optional uint64 hashType = 5; optional uint64 fanout = 6;
               optional uint32 mode = 7; optional UnixTime mtime = 8; }
message UnixTime { required int64 Seconds = 1; optional fixed32 FractionalNanoseconds = 2; }
"""

from dataclasses import dataclass, field

from edge.errors import DecodeError
from edge.ipld.protobuf import BYTES, FIXED32, VARINT, bytes_field, decode_uvarint, iter_fields, varint_field

RAW, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD = range(6)
TYPE_NAMES = {RAW: "raw", DIRECTORY: "directory", FILE: "file", METADATA: "metadata", SYMLINK: "symlink",
              HAMT_SHARD: "hamt-sharded-directory"}
MAX_BLOCKSIZES = 1 << 16


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = field(default_factory=tuple)
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: tuple[int, int | None] | None = None   # (seconds, nanoseconds)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))


def serialize_unixfs(d: UnixFSData) -> bytes:
    parts = [varint_field(1, d.type)]
    if d.data is not None:
        parts.append(bytes_field(2, d.data))
    if d.filesize is not None:
        parts.append(varint_field(3, d.filesize))
    fields: dict[int, bytes] = {}   # a file's block sizes are nearly all one size: each written once
    parts.extend(fields.get(size) or fields.setdefault(size, varint_field(4, size)) for size in d.blocksizes)
    if d.hash_type is not None:
        parts.append(varint_field(5, d.hash_type))
    if d.fanout is not None:
        parts.append(varint_field(6, d.fanout))
    if d.mode is not None:
        parts.append(varint_field(7, d.mode))
    if d.mtime is not None:
        seconds, nanos = d.mtime
        inner = varint_field(1, seconds & 0xFFFFFFFFFFFFFFFF)
        if nanos is not None:
            inner += b"\x15" + nanos.to_bytes(4, "little")
        parts.append(bytes_field(8, inner))
    return b"".join(parts)


def _parse_mtime(buf) -> tuple[int, int | None]:
    seconds = None
    nanos = None
    for number, wire, value, start in iter_fields(buf, "UnixFS mtime"):
        if number == 1 and wire == VARINT:
            seconds = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 2 and wire == FIXED32:
            if value < 1 or value > 999_999_999:
                raise DecodeError(f"UnixFS mtime: FractionalNanoseconds {value} is outside 1..999999999")
            nanos = value
    if seconds is None:
        raise DecodeError("UnixFS mtime has no Seconds")
    return seconds, nanos


def parse_unixfs(buf) -> UnixFSData:
    """The UnixFS Data in buf (a DAG-PB node's Data); DecodeError for a malformed or unknown message."""
    kind = data = filesize = hash_type = fanout = mode = mtime = None
    blocksizes = []
    for number, wire, value, start in iter_fields(buf, "UnixFS data"):
        if number == 1 and wire == VARINT:
            kind = value
        elif number == 2 and wire == BYTES:
            data = bytes(value)
        elif number == 3 and wire == VARINT:
            filesize = value
        elif number == 4 and wire == VARINT:
            blocksizes.append(value)
        elif number == 4 and wire == BYTES:   # packed, which proto2 readers accept too
            off = 0
            while off < len(value):
                size, off = decode_uvarint(value, off)
                blocksizes.append(size)
        elif number == 5 and wire == VARINT:
            hash_type = value
        elif number == 6 and wire == VARINT:
            fanout = value
        elif number == 7 and wire == VARINT:
            mode = value & 0xFFFFFFFF
        elif number == 8 and wire == BYTES:
            mtime = _parse_mtime(value)
        elif number in (1, 2, 3, 5, 6, 7, 8):
            raise DecodeError(f"UnixFS data: field {number} has the wrong wire type ({wire}) at byte {start}")
        # unknown fields are skipped, as protobuf readers do
        if len(blocksizes) > MAX_BLOCKSIZES:
            raise DecodeError(f"UnixFS data lists more than {MAX_BLOCKSIZES} block sizes")
    if kind is None:
        raise DecodeError("UnixFS data has no Type")
    if kind not in TYPE_NAMES:
        raise DecodeError(f"UnixFS data has unknown Type {kind} (0-5 are defined)")
    return UnixFSData(kind, data, filesize, tuple(blocksizes), hash_type, fanout, mode, mtime)
