"""Erasure stripes of whole objects: round trips at awkward sizes and a clear error when too much is lost."""

import random

import pytest

from edge.store import StripeError, decode_object, encode_object, shard_size


@pytest.mark.parametrize("length", [0, 1, 9, 10, 11, 1 << 20, (1 << 20) + 7])
def test_round_trip_after_losing_m_shards(length):
    rng = random.Random(length)
    data = rng.randbytes(length)
    k, m = 10, 4
    shards = encode_object(data, k, m)
    assert len(shards) == k + m and all(len(s) == shard_size(length, k) for s in shards)
    lost = rng.sample(range(k + m), m)
    left = {i: bytes(s) for i, s in enumerate(shards) if i not in lost}
    assert decode_object(left, k, m, length) == data


def test_too_many_lost_is_a_clear_error():
    shards = encode_object(b"x" * 100, 4, 2)
    left = {i: bytes(s) for i, s in enumerate(shards) if i >= 3}
    with pytest.raises(StripeError, match="only 3 of 6 shards survive; any 4 are needed"):
        decode_object(left, 4, 2, 100)
