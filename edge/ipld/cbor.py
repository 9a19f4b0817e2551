"""The slice of DAG-CBOR a CAR header needs: maps, arrays, text, bytes, integers, booleans, null, CID links.

Strict: definite lengths only, no floats, nesting and size bounded, so a hostile header costs little.
"""

from edge.errors import DecodeError
from edge.ipld.cid import CID, cid_from_bytes

CID_TAG = 42
MAX_DEPTH = 16
MAX_ITEMS = 1 << 16


def head(major: int, value: int) -> bytes:
    """The head of a CBOR data item: its major type and argument, in the shortest form (DAG-CBOR's rule)."""
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError(f"integer {value} does not fit CBOR")


def dumps(value) -> bytes:
    """DAG-CBOR bytes of value (map keys sorted length-first, then bytewise, as DAG-CBOR requires)."""
    if value is None:
        return b"\xf6"
    if value is True or value is False:
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return head(3, len(raw)) + raw
    if isinstance(value, (bytes, bytearray)):
        return head(2, len(value)) + bytes(value)
    if isinstance(value, CID):
        raw = b"\0" + bytes(value)
        return head(6, CID_TAG) + head(2, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return head(4, len(value)) + b"".join(dumps(v) for v in value)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))
        return head(5, len(value)) + b"".join(dumps(k) + dumps(value[k]) for k in keys)
    raise TypeError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def loads(buf):
    """The value in buf (exactly one item); DecodeError for anything outside the slice or malformed."""
    view = memoryview(buf)
    value, off = _item(view, 0, 0)
    if off != len(view):
        raise DecodeError(f"DAG-CBOR: {len(view) - off} unexpected byte(s) after the item")
    return value


def _uint(view, off, info):
    if info < 24:
        return info, off
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None:
        raise DecodeError(f"DAG-CBOR: indefinite lengths and reserved values are not allowed (byte {off - 1})")
    if off + size > len(view):
        raise DecodeError("DAG-CBOR: truncated integer")
    return int.from_bytes(view[off:off + size], "big"), off + size


def _item(view, off, depth):
    if depth > MAX_DEPTH:
        raise DecodeError(f"DAG-CBOR nested deeper than {MAX_DEPTH} levels")
    if off >= len(view):
        raise DecodeError("DAG-CBOR: truncated (expected another item)")
    first = view[off]
    major, info = first >> 5, first & 31
    off += 1
    if major == 7:
        simple = {20: False, 21: True, 22: None}
        if info in simple:
            return simple[info], off
        raise DecodeError(f"DAG-CBOR: simple value or float {info} is not allowed here")
    arg, off = _uint(view, off, info)
    if major == 0:
        return arg, off
    if major == 1:
        return -1 - arg, off
    if major in (2, 3):
        if arg > len(view) - off:
            raise DecodeError(f"DAG-CBOR: string of {arg} bytes runs past the end")
        raw = bytes(view[off:off + arg])
        if major == 2:
            return raw, off + arg
        try:
            return raw.decode("utf-8"), off + arg
        except UnicodeDecodeError:
            raise DecodeError("DAG-CBOR: text string is not valid UTF-8") from None
    if major == 4:
        if arg > MAX_ITEMS:
            raise DecodeError(f"DAG-CBOR: array of {arg} items is over the {MAX_ITEMS} limit")
        out = []
        for _ in range(arg):
            value, off = _item(view, off, depth + 1)
            out.append(value)
        return out, off
    if major == 5:
        if arg > MAX_ITEMS:
            raise DecodeError(f"DAG-CBOR: map of {arg} entries is over the {MAX_ITEMS} limit")
        out = {}
        for _ in range(arg):
            k, off = _item(view, off, depth + 1)
            if not isinstance(k, str):
                raise DecodeError("DAG-CBOR: map keys must be text")
            if k in out:
                raise DecodeError(f"DAG-CBOR: map key {k!r} appears twice")
            out[k], off = _item(view, off, depth + 1)
        return out, off
    if arg != CID_TAG:
        raise DecodeError(f"DAG-CBOR: tag {arg} is not allowed (only 42, a CID)")
    raw, off = _item(view, off, depth + 1)
    if not isinstance(raw, bytes) or not raw or raw[0] != 0:
        raise DecodeError("DAG-CBOR: a CID (tag 42) must be a byte string starting with 0x00")
    return cid_from_bytes(raw[1:]), off
