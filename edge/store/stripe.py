"""Erasure stripes of whole objects: split into k equal shards (zero-padded), add m parity shards, rebuild from
any k. The object's length travels with the stripe (the manifest's job later), not inside the shards."""

from edge.errors import EdgeError
from edge.kernels import Decoder, Encoder


class StripeError(EdgeError):
    """A stripe cannot be rebuilt from what is left of it."""


def shard_size(length: int, k: int) -> int:
    """Bytes per shard for an object of `length` bytes split k ways (at least 1, so empty objects stripe too)."""
    return max(1, -(-length // k))


def encode_object(data, k: int, m: int) -> list[bytearray]:
    """The k data shards followed by the m parity shards of `data`."""
    view = memoryview(data).cast("B")
    size = shard_size(len(view), k)
    shards = [bytearray(size) for _ in range(k + m)]
    for i in range(k):
        piece = view[i * size:(i + 1) * size]
        shards[i][:len(piece)] = piece
    Encoder(k, m).encode(shards[:k], shards[k:])
    return shards


def decode_object(shards: dict[int, bytes], k: int, m: int, length: int) -> bytes:
    """Rebuild the object of `length` bytes from any k shards, given as {shard number: bytes}."""
    if len(shards) < k:
        raise StripeError(f"only {len(shards)} of {k + m} shards survive; any {k} are needed to rebuild the object")
    have = sorted(shards)[:k]
    lost = [i for i in range(k) if i not in shards]
    size = shard_size(length, k)
    rebuilt = [bytearray(size) for _ in lost]
    if lost:
        Decoder(k, m).decode([shards[i] for i in have], have, rebuilt, lost)
    by_number = dict(zip(lost, rebuilt))
    out = b"".join(bytes(shards[i]) if i in shards else bytes(by_number[i]) for i in range(k))
    return out[:length]
