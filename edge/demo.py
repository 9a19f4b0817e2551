"""The demonstration `make run` shows until the agent exists: encode, lose, rebuild, verify."""

import random
import time

from edge.kernels import erasure_path, sha256_many
from edge.store import decode_object, encode_object, shard_size


def erasure_demo(data: bytes, name: str, k: int, m: int, rng: random.Random):
    """Yield lines describing each step; raise if the rebuilt bytes differ."""
    yield f"object: {name} ({len(data):,} bytes), Reed-Solomon {k}+{m} on the {erasure_path()} kernel"
    t0 = time.perf_counter()
    shards = encode_object(data, k, m)
    t1 = time.perf_counter()
    # Wall time of the whole step (allocating and filling the shards included); `make bench` measures the kernel.
    yield (f"split and encoded into {k} data + {m} parity shards of {shard_size(len(data), k):,} bytes "
           f"in {1000 * (t1 - t0):.1f} ms")
    digests = sha256_many(shards)
    lost = sorted(rng.sample(range(k + m), m))
    yield f"lost shards {lost} (any {m} of {k + m} may go)"
    survivors = {i: bytes(s) for i, s in enumerate(shards) if i not in lost}
    t2 = time.perf_counter()
    rebuilt = decode_object(survivors, k, m, len(data))
    t3 = time.perf_counter()
    yield f"rebuilt from {len(survivors)} survivors in {1000 * (t3 - t2):.1f} ms"
    ok = rebuilt == bytes(data)
    again = encode_object(rebuilt, k, m)
    ok = ok and sha256_many(again) == digests
    if not ok:
        raise RuntimeError("rebuilt object differs from the original: the erasure kernel is broken")
    yield "verified: every byte and every shard's SHA2-256 match the original"


def run_demo(path: str | None, k: int, m: int, size: int, seed: int | None):
    """`hearth demo`: erasure_demo's lines for the file at path, or for size random bytes; seed makes the data and
    the lost shards repeatable."""
    rng = random.Random(seed)
    if path:
        with open(path, "rb") as f:
            data = f.read()
        name = path
    else:
        data = rng.randbytes(size)
        name = "random data"
    yield from erasure_demo(data, name, k, m, rng)
