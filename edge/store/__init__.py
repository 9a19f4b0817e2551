"""Content storage: CIDs, UnixFS DAGs, CAR files, the block store with pins and GC, and erasure stripes."""

from edge.store.cid import CID, parse_cid
from edge.store.errors import (BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull, StoreLocked)
from edge.store.importer import Chunker, Imported, Importer, parse_chunker
from edge.store.repo import Store, VerifyReport
from edge.store.stripe import StripeError, decode_object, encode_object, shard_size

__all__ = ["CID", "parse_cid", "BlockNotFound", "CorruptBlock", "QuotaExceeded", "StoreError", "StoreFull",
           "StoreLocked", "Chunker", "Imported", "Importer", "parse_chunker", "Store", "VerifyReport",
           "StripeError", "decode_object", "encode_object", "shard_size"]
