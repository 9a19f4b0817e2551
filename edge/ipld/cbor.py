"""The slice of DAG-CBOR a CAR header needs: maps, arrays, text, bytes, integers, booleans, null, CID links.

Strict: definite lengths only, no floats, nesting and size bounded, so a hostile header costs little.
"""

from edge.errors import DecodeError
from edge.ipld.cid import CID, cid_from_bytes

CID_TAG = 42
MAX_DEPTH = 16
MAX_ITEMS = 1 << 16
_SIMPLE = {20: False, 21: True, 22: None}


def head(major: int, value: int) -> bytes:
    """The head of a CBOR data item: its major type and argument, in the shortest form (DAG-CBOR's rule)."""
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError(f"integer {value} does not fit CBOR")


_CID_HEAD = head(6, CID_TAG)


def dumps(value) -> bytes:
    """DAG-CBOR bytes of value (map keys sorted length-first, then bytewise, as DAG-CBOR requires)."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _put_head(out: bytearray, first: int, value: int):
    """head() appended to out; first is the major type already shifted (major << 5)."""
    if value < 24:
        out.append(first | value)
    elif value < 0x100:
        out += bytes((first | 24, value))
    else:
        out += head(first >> 5, value)


def _encode(value, out: bytearray):
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8")
        _put_head(out, 0x60, len(raw))
        out += raw
    elif kind is int:
        if value >= 0:
            _put_head(out, 0x00, value)
        else:
            _put_head(out, 0x20, -1 - value)
    elif kind is dict:
        _put_head(out, 0xa0, len(value))
        for raw, key in sorted(((k.encode("utf-8"), k) for k in value), key=_map_order):
            _put_head(out, 0x60, len(raw))
            out += raw
            _encode(value[key], out)
    elif kind is list or kind is tuple:
        _put_head(out, 0x80, len(value))
        for item in value:
            _encode(item, out)
    elif kind is bytes:
        _put_head(out, 0x40, len(value))
        out += value
    elif value is None:
        out.append(0xf6)
    elif kind is bool:
        out.append(0xf5 if value else 0xf4)
    elif isinstance(value, CID):
        raw = b"\0" + bytes(value)
        out += _CID_HEAD
        _put_head(out, 0x40, len(raw))
        out += raw
    elif isinstance(value, int):     # subclasses (IntEnum, ...) as the plain value they stand for
        _encode(int.__index__(value), out)
    elif isinstance(value, str):
        _encode(str.__str__(value), out)
    elif isinstance(value, (bytes, bytearray)):
        _encode(bytes(value), out)
    elif isinstance(value, (list, tuple)):
        _encode(list(value), out)
    elif isinstance(value, dict):
        _encode(dict(value), out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def _map_order(entry):
    return len(entry[0]), entry[0]


def loads(buf):
    """The value in buf (exactly one item); DecodeError for anything outside the slice or malformed."""
    data = bytes(buf)           # no copy when buf is bytes; strings then come out of slices directly
    value, off = _item(data, 0, 0)
    if off != len(data):
        raise DecodeError(f"DAG-CBOR: {len(data) - off} unexpected byte(s) after the item")
    return value


_UINT_SIZES = {24: 1, 25: 2, 26: 4, 27: 8}


def _uint(data, off, info):
    size = _UINT_SIZES.get(info)
    if size is None:
        raise DecodeError(f"DAG-CBOR: indefinite lengths and reserved values are not allowed (byte {off - 1})")
    if off + size > len(data):
        raise DecodeError("DAG-CBOR: truncated integer")
    return int.from_bytes(data[off:off + size], "big"), off + size


def _item(data, off, depth):
    if depth > MAX_DEPTH:
        raise DecodeError(f"DAG-CBOR nested deeper than {MAX_DEPTH} levels")
    if off >= len(data):
        raise DecodeError("DAG-CBOR: truncated (expected another item)")
    first = data[off]
    major, info = first >> 5, first & 31
    off += 1
    if major == 7:
        if info in _SIMPLE:
            return _SIMPLE[info], off
        raise DecodeError(f"DAG-CBOR: simple value or float {info} is not allowed here")
    if info < 24:
        arg = info
    else:
        arg, off = _uint(data, off, info)
    if major == 0:
        return arg, off
    if major == 3:
        if arg > len(data) - off:
            raise DecodeError(f"DAG-CBOR: string of {arg} bytes runs past the end")
        try:
            return data[off:off + arg].decode("utf-8"), off + arg
        except UnicodeDecodeError:
            raise DecodeError("DAG-CBOR: text string is not valid UTF-8") from None
    if major == 2:
        if arg > len(data) - off:
            raise DecodeError(f"DAG-CBOR: string of {arg} bytes runs past the end")
        return data[off:off + arg], off + arg
    if major == 1:
        return -1 - arg, off
    if major == 4:
        if arg > MAX_ITEMS:
            raise DecodeError(f"DAG-CBOR: array of {arg} items is over the {MAX_ITEMS} limit")
        out = []
        for _ in range(arg):
            value, off = _item(data, off, depth + 1)
            out.append(value)
        return out, off
    if major == 5:
        if arg > MAX_ITEMS:
            raise DecodeError(f"DAG-CBOR: map of {arg} entries is over the {MAX_ITEMS} limit")
        out = {}
        for _ in range(arg):
            k, off = _item(data, off, depth + 1)
            if not isinstance(k, str):
                raise DecodeError("DAG-CBOR: map keys must be text")
            if k in out:
                raise DecodeError(f"DAG-CBOR: map key {k!r} appears twice")
            out[k], off = _item(data, off, depth + 1)
        return out, off
    if arg != CID_TAG:
        raise DecodeError(f"DAG-CBOR: tag {arg} is not allowed (only 42, a CID)")
    raw, off = _item(data, off, depth + 1)
    if not isinstance(raw, bytes) or not raw or raw[0] != 0:
        raise DecodeError("DAG-CBOR: a CID (tag 42) must be a byte string starting with 0x00")
    return cid_from_bytes(raw[1:]), off
