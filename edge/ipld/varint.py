"""Unsigned LEB128 varints as multiformats uses them: at most 9 bytes (63 bits), minimal encoding only."""

from edge.errors import DecodeError

MAX_BYTES = 9
MAX_VALUE = (1 << 63) - 1


def encode_uvarint(value: int) -> bytes:
    """The varint bytes of a non-negative integer below 2**63."""
    if value < 0 or value > MAX_VALUE:
        raise ValueError(f"a varint holds 0 to 2**63-1, got {value}")
    return leb128(value)


def leb128(value: int) -> bytes:
    """The unsigned LEB128 bytes of a non-negative integer, unbounded: each caller checks its own limit (63 bits
    here, 64 for protobuf)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(buf, offset: int = 0) -> tuple[int, int]:
    """(value, offset just past it) of the varint at buf[offset:]; DecodeError if truncated, too long or padded."""
    value = 0
    shift = 0
    end = len(buf)
    for i in range(MAX_BYTES):
        pos = offset + i
        if pos >= end:
            raise DecodeError(f"varint at byte {offset} is truncated: the data ends after {i} byte(s)")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise DecodeError(f"varint at byte {offset} is not minimally encoded (trailing zero byte)")
            return value, pos + 1
        shift += 7
    raise DecodeError(f"varint at byte {offset} is longer than {MAX_BYTES} bytes (more than 63 bits)")
