"""Multibase text: a one-character prefix naming the base, then the data in that base (no padding)."""

import base64
import binascii

from edge.errors import DecodeError
from edge.kernels import b32lower as _b32lower

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}
_B36_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"

# prefix -> base name; what `decode` accepts
BASES = {
    "b": "base32", "B": "base32upper", "z": "base58btc", "f": "base16", "F": "base16upper",
    "k": "base36", "K": "base36upper", "m": "base64", "u": "base64url",
}
_PREFIX = {name: prefix for prefix, name in BASES.items()}
_URLSAFE = str.maketrans("-_", "+/")


def _radix_encode(data: bytes, alphabet: str) -> str:
    """data as one big-endian number in the alphabet's digits, each leading zero byte kept as its zero digit
    (base58btc and base36 alike)."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    digits = []
    while num:
        num, rem = divmod(num, len(alphabet))
        digits.append(alphabet[rem])
    return alphabet[0] * zeros + "".join(reversed(digits))


def b58encode(data: bytes) -> str:
    return _radix_encode(data, B58_ALPHABET)


def b58decode(text: str) -> bytes:
    num = 0
    for pos, ch in enumerate(text):
        try:
            num = num * 58 + _B58_INDEX[ch]
        except KeyError:
            raise DecodeError(f"{ch!r} at position {pos} is not a base58btc character") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def _b36decode(text: str) -> bytes:
    for pos, ch in enumerate(text):
        if ch not in _B36_ALPHABET:
            raise DecodeError(f"{ch!r} at position {pos} is not a base36 character")
    zeros = len(text) - len(text.lstrip("0"))
    num = int(text, 36) if text.strip("0") else 0
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def b32lower(data) -> str:
    """RFC 4648 base32 of data, lower case, unpadded (the native kernel: block file names are this of every CID
    read)."""
    return _b32lower(data if type(data) is bytes else bytes(data))


def encode(base: str, data: bytes) -> str:
    """Multibase text of data in the named base (base32, base58btc, base16, base36, base64, base64url)."""
    if base == "base32":
        body = b32lower(data)
    elif base == "base32upper":
        body = base64.b32encode(data).decode().rstrip("=")
    elif base == "base58btc":
        body = b58encode(data)
    elif base in ("base16", "base16upper"):
        body = data.hex() if base == "base16" else data.hex().upper()
    elif base in ("base36", "base36upper"):
        body = _radix_encode(data, _B36_ALPHABET)
        if base == "base36upper":
            body = body.upper()
    elif base == "base64":
        body = base64.b64encode(data).decode().rstrip("=")
    elif base == "base64url":
        body = base64.urlsafe_b64encode(data).decode().rstrip("=")
    else:
        raise ValueError(f"unknown multibase {base!r}; known: {', '.join(sorted(_PREFIX))}")
    return _PREFIX[base] + body


def decode(text: str) -> tuple[str, bytes]:
    """(base name, data) of multibase text; DecodeError naming the problem for anything else."""
    if not isinstance(text, str):
        raise DecodeError(f"multibase text must be a str, got {type(text).__name__}")
    if not text:
        raise DecodeError("empty multibase text")
    prefix, body = text[0], text[1:]
    base = BASES.get(prefix)
    if base is None:
        raise DecodeError(f"unknown multibase prefix {prefix!r}; known: {' '.join(sorted(BASES))}")
    if not body.isascii():
        raise DecodeError(f"{base} text contains non-ASCII characters")
    try:
        if base in ("base32", "base32upper"):
            if base == "base32" and body != body.lower() or base == "base32upper" and body != body.upper():
                raise DecodeError(f"{base} text mixes letter cases")
            if len(body) % 8 in (1, 3, 6):
                raise DecodeError(f"{base} text has an impossible length ({len(body)} characters)")
            data = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        elif base == "base58btc":
            data = b58decode(body)
        elif base in ("base16", "base16upper"):
            if base == "base16" and body != body.lower() or base == "base16upper" and body != body.upper():
                raise DecodeError(f"{base} text mixes letter cases")
            data = bytes.fromhex(body) if len(body) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in body) \
                else _raise(f"{base} text is not an even number of hex digits")
        elif base in ("base36", "base36upper"):
            data = _b36decode(body.lower())
        elif base == "base64":
            if len(body) % 4 == 1:
                raise DecodeError(f"base64 text has an impossible length ({len(body)} characters)")
            data = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        else:
            if len(body) % 4 == 1 or any(c in "+/=" for c in body):
                raise DecodeError("base64url text has an impossible length or a character outside its alphabet")
            data = base64.b64decode(body.translate(_URLSAFE) + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"invalid {base} text: {exc}") from None
    return base, data


def _raise(message):
    raise DecodeError(message)
