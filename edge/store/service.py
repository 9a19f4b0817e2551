"""The store's face for Trio code: the same operations as Store, each awaited while a worker thread does the
blocking part (SQLite, the block files, statvfs), so no task ever waits for the disk on the Trio thread.

Reads run behind a limiter of their own (READ_THREADS) and writes behind another (WRITE_THREADS): a burst of
readers cannot take every worker thread a fetch needs to store what it brings, nor the reverse. Writes from
every thread end in the catalog's one writer thread (edge/store/catalog.py), which batches them. `protect`
never waits for anything and is entered directly.
"""

import functools

import trio

from edge.ipld.cid import CID
from edge.store.repo import Store

READ_THREADS = 8
WRITE_THREADS = 4


class AsyncStore:
    """Awaitable Store operations for Trio code. `run(fn, *args)` runs any blocking work that reads the store
    (a walk of a DAG through `sync.get`, say) on a read thread."""

    def __init__(self, store: Store, *, read_threads: int = READ_THREADS, write_threads: int = WRITE_THREADS):
        self.sync = store   # the blocking Store, for work handed to `run` (never called on the Trio thread)
        self.root = store.root
        self._reads = trio.CapacityLimiter(read_threads)
        self._writes = trio.CapacityLimiter(write_threads)

    async def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on a read thread (fn may call the store's blocking methods)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._reads)

    async def _write(self, fn, *args, **kwargs):
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._writes)

    # reads --------------------------------------------------------------------------------------------------

    async def has(self, cid: CID) -> bool:
        return await self.run(self.sync.has, cid)

    async def get(self, cid: CID) -> bytes:
        return await self.run(self.sync.get, cid)

    async def get_many(self, cids) -> list:
        return await self.run(self.sync.get_many, cids)

    async def dag(self, cid: CID) -> tuple[int, list[str]]:
        return await self.run(self.sync.dag, cid)

    async def name(self, name: str) -> dict | None:
        return await self.run(self.sync.name, name)

    async def names(self, kind: str | None = None) -> list[dict]:
        return await self.run(self.sync.names, kind)

    async def pins(self) -> list[dict]:
        return await self.run(self.sync.pins)

    async def stat(self, usage: bool = False) -> dict:
        """Store.stat (a count over the catalog and a statvfs): for status and metrics."""
        return await self.run(self.sync.stat, usage)

    # writes -------------------------------------------------------------------------------------------------

    async def put_many(self, blocks, *, verify: bool = False) -> int:
        return await self._write(self.sync.put_many, blocks, verify=verify)

    async def pin(self, cid: CID, *, recursive: bool = True, name: str | None = None) -> None:
        await self._write(self.sync.pin, cid, recursive=recursive, name=name)

    async def unpin(self, cid: CID) -> None:
        await self._write(self.sync.unpin, cid)

    def protect(self, root: CID | None = None):
        """Store.protect: never waits (entered on the Trio thread)."""
        return self.sync.protect(root)
