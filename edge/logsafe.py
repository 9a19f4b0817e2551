"""One helper for every text from the network that reaches a log: control characters escaped, length bounded.

A neighbour's error text, an mDNS name or a node id from a Hello is the sender's to choose; written to the
journal as is, a newline starts a line of the sender's making (`<0>` is an emergency there) and a megabyte of
text fills it. printable() makes any such text one bounded line.
"""

LIMIT = 300   # characters of a peer's text kept in a log line


def printable(text, limit: int = LIMIT) -> str:
    """text as one line: control, format and separator characters (newlines, escape sequences, bidi overrides)
    written as \\xNN / \\uNNNN escapes, cut to limit characters with "..." after."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    cut = len(text) > limit
    text = text[:limit]
    if text.isprintable():
        return text + "..." if cut else text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out) + ("..." if cut else "")
