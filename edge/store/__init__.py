"""Content storage: erasure stripes now; blocks, CIDs and pins build on it."""

from edge.store.stripe import StripeError, decode_object, encode_object, shard_size

__all__ = ["StripeError", "decode_object", "encode_object", "shard_size"]
