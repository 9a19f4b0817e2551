"""The block store: block files, the SQLite catalog, pins, GC, the cache, import and export, and erasure
stripes. The content formats it stores are in edge.ipld."""

from edge.store.errors import (BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull, StoreLocked)
from edge.store.importer import Chunker, Imported, Importer, parse_chunker
from edge.store.maintenance import VerifyReport
from edge.store.repo import Store
from edge.store.stripe import StripeError, decode_object, encode_object, shard_size

__all__ = ["BlockNotFound", "CorruptBlock", "QuotaExceeded", "StoreError", "StoreFull",
           "StoreLocked", "Chunker", "Imported", "Importer", "parse_chunker", "Store", "VerifyReport",
           "StripeError", "decode_object", "encode_object", "shard_size"]
