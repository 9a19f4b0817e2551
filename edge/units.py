"""Byte sizes and byte rates as people write them: one parser for hearth.toml, HEARTH_* variables, flags and seeds.

    200000000000   plain bytes          (a TOML integer, or text)
    200G  2.5M     SI units: K, M, G, T are powers of 1000 (as disks and network speeds are sold; "KB", "MB",
                   "GB", "TB" mean the same)
    500GiB  16MiB  IEC units: KiB, MiB, GiB, TiB are powers of 1024

Letters may be upper or lower case, with or without a space before the unit; a trailing "B" is optional after
an SI prefix. A rate is written the same way, optionally followed by "/s" ("2.5M/s" is 2,500,000 bytes a
second, 20 Mbit/s). A fraction of a byte is dropped. Negative values are refused.
"""

import re
from fractions import Fraction

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
         "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
SIZE_FORMS = ("a number of bytes with an optional unit: K, M, G, T for powers of 1000 (200G), KiB, MiB, GiB, "
              "TiB for powers of 1024 (500GiB); e.g. 2.5M, 16MiB, 1000000")
RATE_FORMS = ("bytes per second with an optional unit: K, M, G for powers of 1000, KiB, MiB, GiB for powers of "
              "1024, optionally followed by /s; e.g. 2.5M (20 Mbit/s), 500KiB/s, 1000000")
_NUMBER = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")


def _parse(value, rate: bool) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        if value < 0:
            raise ValueError
        return value
    if isinstance(value, float):
        if value < 0 or value != value or value in (float("inf"),):
            raise ValueError
        return int(value)
    if not isinstance(value, str):
        raise ValueError
    text = value
    if rate:
        text = re.sub(r"\s*/\s*s(ec)?\s*$", "", text, flags=re.IGNORECASE)
    m = _NUMBER.fullmatch(text)
    if not m or m.group(2).lower() not in UNITS:
        raise ValueError
    return int(Fraction(m.group(1)) * UNITS[m.group(2).lower()])


def parse_size(value) -> int:
    """Bytes from 500000, '500K', '64MiB', '2G', '1.5TB'; ValueError saying what is accepted."""
    try:
        return _parse(value, rate=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a size; use {SIZE_FORMS}") from None


def parse_rate(value) -> int:
    """Bytes per second from 2500000, '2.5M', '2.5M/s', '500KiB/s'; ValueError saying what is accepted."""
    try:
        return _parse(value, rate=True)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate; use {RATE_FORMS}") from None


def format_size(n: int) -> str:
    """The shortest exact way to write n bytes that parse_size reads back: "16MiB", "2G", "2052KiB", "1500"."""
    if n <= 0:
        return str(n)
    best = str(n)
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024),
                         ("T", 1000**4), ("G", 1000**3), ("M", 1000**2), ("K", 1000)):
        if n % factor == 0 and len(f"{n // factor}{unit}") <= len(best):   # a unit reads better at a tie
            best = f"{n // factor}{unit}"
    return best


def human(n: int) -> str:
    """A rounded, readable size for messages: '1.5 GiB', '312 KiB', '900 bytes'."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{n:,} bytes"
