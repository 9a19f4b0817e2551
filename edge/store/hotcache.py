"""A small memory cache of blocks already checked against their CIDs, for content read again and again (a popular
segment served to every neighbour, a page many viewers open): a hit costs one stat of the block's file instead
of a read and a SHA-256 over it. On a router or a Pi 4 (no SHA instructions: ~150 MB/s) that hash is most of
the CPU a served block costs.

- Bytes enter only after a read that was checked against the CID, and only on their second read while still
  remembered: a fetch, an export or a `verify` reading everything once does not push out what is popular.
- A hit is served only while the block's file is the one it was kept with (same inode, size and mtime, taken with
  one stat when the block is kept: the read itself takes none), so a block that GC removed (in this process or
  another) or that was quarantined is never served from here.
- Blocks are known by their binary CIDv1 (the store's key); a file's path is worked out only for a hit (its
  stat), so a miss costs a dict lookup, not a path (a path a block was ~1 µs of a served small block's CPU).
- Bounded in bytes (no single block over an eighth of it); the least recently used goes first.
"""

import collections
import os
import threading

from edge.store.blockfiles import file_identity

SEEN = 4096   # blocks read once that are remembered (keys only), waiting for a second read


class HotBlocks:
    def __init__(self, max_bytes: int, path_of):
        """path_of(key): the path of the block file whose binary CIDv1 is key (BlockFiles.key_path)."""
        self.max_bytes = max_bytes
        self.path_of = path_of
        self.max_block = max_bytes // 8
        self.bytes = 0
        self.hits = 0
        self._blocks: collections.OrderedDict = collections.OrderedDict()   # key -> (bytes, file identity)
        self._seen: collections.OrderedDict = collections.OrderedDict()     # key -> None
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        """The cached bytes of the block key (its binary CIDv1), if cached and its file is still the same one."""
        entry = self._blocks.get(key)
        if entry is None:
            return None
        data, identity = entry
        try:
            st = os.stat(self.path_of(key))
        except FileNotFoundError:
            self.drop(key)
            return None
        if file_identity(st) != identity:
            self.drop(key)
            return None
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
            self.hits += 1
        return data

    def offer(self, key: bytes, data: bytes, identity=None) -> None:
        """Bytes of the block key just read from its file and checked against their CID: kept if this is their
        second read. identity is the file's, if the read took it; else it is taken here (one stat, only for a
        block about to be kept): the file is the one read or a later copy of the same bytes, or gone (not kept)."""
        if len(data) > self.max_block:
            return
        with self._lock:
            if key in self._blocks:
                return
            if key not in self._seen:   # the first read: remember the key only
                self._seen[key] = None
                if len(self._seen) > SEEN:
                    self._seen.popitem(last=False)
                return
        if identity is None:
            try:
                identity = file_identity(os.stat(self.path_of(key)))
            except OSError:   # removed since the read (GC, quarantine): not kept
                return
        with self._lock:
            if key in self._blocks or key not in self._seen:   # another thread kept it, or it was dropped
                return
            del self._seen[key]
            self._blocks[key] = (data, identity)
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, (old, _) = self._blocks.popitem(last=False)
                self.bytes -= len(old)

    def drop(self, key: bytes) -> None:
        with self._lock:
            entry = self._blocks.pop(key, None)
            if entry is not None:
                self.bytes -= len(entry[0])
            self._seen.pop(key, None)

    def stat(self) -> dict:
        return {"blocks": len(self._blocks), "bytes": self.bytes, "limit": self.max_bytes, "hits": self.hits}
