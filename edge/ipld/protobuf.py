"""The few protobuf wire rules DAG-PB and UnixFS need: keys, varints, length-delimited fields."""

from edge.errors import DecodeError
from edge.ipld.varint import leb128

MAX_VARINT = 10   # protobuf varints carry 64 bits (negative int64 takes all ten bytes), unlike multiformats' 9


def encode_uvarint(value: int) -> bytes:
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"a protobuf varint holds 0 to 2**64-1, got {value}")
    return leb128(value)


def decode_uvarint(buf, offset: int = 0) -> tuple[int, int]:
    value = shift = 0
    for i in range(MAX_VARINT):
        pos = offset + i
        if pos >= len(buf):
            raise DecodeError(f"varint at byte {offset} is truncated")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >= 1 << 64:
                raise DecodeError(f"varint at byte {offset} is over 64 bits")
            return value, pos + 1
        shift += 7
    raise DecodeError(f"varint at byte {offset} is longer than {MAX_VARINT} bytes")

VARINT = 0
FIXED64 = 1
BYTES = 2
FIXED32 = 5


def key(field: int, wire_type: int) -> bytes:
    return encode_uvarint(field << 3 | wire_type)


def bytes_field(field: int, value: bytes) -> bytes:
    return key(field, BYTES) + encode_uvarint(len(value)) + value


def varint_field(field: int, value: int) -> bytes:
    return key(field, VARINT) + encode_uvarint(value)


def iter_fields(buf, what: str):
    """Yield (field number, wire type, value, offset) for each field; value is an int or a memoryview."""
    view = memoryview(buf)
    off = 0
    end = len(view)
    while off < end:
        start = off
        try:
            k, off = decode_uvarint(view, off)
        except DecodeError as exc:
            raise DecodeError(f"{what}: bad field key at byte {start}: {exc}") from None
        field, wire = k >> 3, k & 7
        if field == 0:
            raise DecodeError(f"{what}: field number 0 at byte {start} is not allowed")
        if wire == VARINT:
            try:
                value, off = decode_uvarint(view, off)
            except DecodeError as exc:
                raise DecodeError(f"{what}: field {field}: {exc}") from None
        elif wire == BYTES:
            try:
                length, off = decode_uvarint(view, off)
            except DecodeError as exc:
                raise DecodeError(f"{what}: field {field} length: {exc}") from None
            if length > end - off:
                raise DecodeError(f"{what}: field {field} declares {length} bytes but only {end - off} remain")
            value = view[off:off + length]
            off += length
        elif wire == FIXED64 or wire == FIXED32:
            size = 8 if wire == FIXED64 else 4
            if size > end - off:
                raise DecodeError(f"{what}: field {field} is truncated ({size} bytes needed)")
            value = int.from_bytes(view[off:off + size], "little")
            off += size
        else:
            raise DecodeError(f"{what}: field {field} at byte {start} has wire type {wire}, which is not allowed")
        yield field, wire, value, start
