"""Inputs shared by the known-answer tests, built the same way as by the script that produced the answers."""

import os

CHUNK = 256 * 1024


def pattern(n: int) -> bytes:
    """Byte i is i mod 251: deterministic, and no two 256 KiB leaves of a file alike."""
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def nested_tree(root: str) -> str:
    """root/{a.txt, sub/{b.bin, empty, deeper/c.txt}, emptydir/, 'été ☃.txt'}."""
    os.makedirs(os.path.join(root, "sub", "deeper"))
    os.makedirs(os.path.join(root, "emptydir"))
    files = {"a.txt": b"hello\n", "sub/b.bin": pattern(300 * 1024), "sub/empty": b"", "sub/deeper/c.txt": b"deep",
             "\u00e9t\u00e9 \u2603.txt": b"unicode name"}
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return root


def flat_tree(root: str, count: int, width: int) -> str:
    """count files named 'f' + zero-padded index to width characters, each holding its own name."""
    os.makedirs(root)
    for i in range(count):
        name = "f" + str(i).zfill(width - 1)
        with open(os.path.join(root, name), "wb") as f:
            f.write(name.encode())
    return root
