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


# Pieces of a protected segment (edge/protect/segments.py): the segment is cut into stripes of k shards of
# `width` bytes each, and piece i is shard i of every stripe, in stripe order. Reed-Solomon works byte by byte
# across shards, so the m parity pieces of all stripes at once are one encoder call over the k whole data pieces.
# Ranges of k pieces give a range of the segment: [s·width, (s+1)·width) of each data piece is the segment's
# [s·k·width, (s+1)·k·width), so a reader can decode as ranges arrive.
STRIPE_WIDTH = 64 * 1024


def stripe_width(length: int, k: int) -> int:
    """The shard width of a segment of `length` bytes: 64 KiB, or less for a small segment (padding stays < k·width)."""
    return min(STRIPE_WIDTH, shard_size(length, k))


def piece_size(length: int, k: int) -> int:
    """Bytes of each of the k+m pieces of a segment of `length` bytes."""
    width = stripe_width(length, k)
    return -(-length // (k * width)) * width


def encode_pieces(data, k: int, m: int) -> list[bytearray]:
    """The k data pieces then the m parity pieces of `data`; with k == 1 every piece is a whole copy."""
    return encode_parts([data], k, m)


def encode_parts(parts, k: int, m: int) -> list[bytearray]:
    """encode_pieces of the concatenation of parts (bytes-like), copied straight into the pieces without making
    the concatenation (a segment's header and blocks: one copy of the segment fewer)."""
    views = [memoryview(p).cast("B") for p in parts]
    length = sum(len(v) for v in views)
    width, size = stripe_width(length, k), piece_size(length, k)
    if k == 1:
        whole = b"".join(views)
        return [bytearray(whole) + bytearray(size - length) for _ in range(1 + m)]
    pieces = [bytearray(size) for _ in range(k + m)]
    start = 0                       # where the current view begins in the data
    for view in views:
        done = 0
        while done < len(view):     # one copy per stripe shard the view touches
            at = start + done
            stripe, shard = divmod(at // width, k)
            within = at % width
            n = min(width - within, len(view) - done)
            pieces[shard][stripe * width + within:stripe * width + within + n] = view[done:done + n]
            done += n
        start += len(view)
    Encoder(k, m).encode(pieces[:k], pieces[k:])
    return pieces


def decode_pieces(pieces: dict[int, bytes], k: int, m: int, length: int) -> bytes:
    """The segment of `length` bytes from any k of its pieces, given as {piece number: bytes}; the decoder runs
    only when a data piece is missing."""
    if len(pieces) < k:
        raise StripeError(f"only {len(pieces)} of {k + m} pieces are at hand; any {k} are needed to rebuild")
    width, size = stripe_width(length, k), piece_size(length, k)
    if any(len(p) != size for p in pieces.values()):
        raise StripeError(f"every piece of this segment is {size} bytes")
    if k == 1:
        return bytes(memoryview(next(iter(pieces.values())))[:length])
    data = {i: pieces[i] for i in range(k) if i in pieces}
    lost = [i for i in range(k) if i not in pieces]
    if lost:
        have = sorted(pieces)[:k]
        rebuilt = [bytearray(size) for _ in lost]
        Decoder(k, m).decode([pieces[i] for i in have], have, rebuilt, lost)
        data.update(zip(lost, rebuilt))
    out = bytearray(length)
    for start in range(0, length, width):
        stripe, shard = divmod(start // width, k)
        end = min(start + width, length)
        out[start:end] = memoryview(data[shard])[stripe * width:stripe * width + end - start]
    return bytes(out)


def rebuild_piece(pieces: dict[int, bytes], k: int, m: int, length: int, want: int) -> bytes:
    """Piece `want` alone from any k others (what a new holder computes in repair: only its own piece)."""
    if want in pieces:
        return bytes(pieces[want])
    if len(pieces) < k:
        raise StripeError(f"only {len(pieces)} of {k + m} pieces are at hand; any {k} are needed to rebuild")
    size = piece_size(length, k)
    if any(len(p) != size for p in pieces.values()):
        raise StripeError(f"every piece of this segment is {size} bytes")
    if k == 1:
        return bytes(next(iter(pieces.values())))
    have = sorted(pieces)[:k]
    out = bytearray(size)
    Decoder(k, m).decode([pieces[i] for i in have], have, [out], [want])
    return bytes(out)
