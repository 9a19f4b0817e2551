"""Fetching a DAG from neighbours, a level at a time.

For the blocks of a level this node lacks: ask every connected neighbour which it holds (one Have for up to
1,024 CIDs), give each block to its best-scored holder, and pull every holder's share through a pipelined
window (Client.get_many, which checks each block against its CID). Blocks are stored in batches, one durable
write per batch, while the next ones arrive. A holder that fails or lies loses the rest of its share to the
next holder; one that says BUSY is waited for. DAG-PB nodes are kept for their links; leaves go to disk.

A reader waiting for one block (the gateway, a viewer who seeks) can move the fetch there: `want(cid)` makes
every holder's queue go on from that block, so a range near the end of a large file or a segment in the middle
of a stream comes next, and the blocks skipped are fetched after the end (each block still fetched once).
"""

import bisect
import collections
import logging

import trio

from edge.errors import EdgeError, first_error
from edge.store.cid import DAG_PB, CID
from edge.store.dagpb import parse_pbnode
from edge.transport.client import PeerRefused, TransportError
from edge.wire import MAX_HAVE, ErrorCode

log = logging.getLogger(__name__)
WINDOW = 16              # requests in flight to one neighbour
STORE_BLOCKS = 32        # blocks per durable write ...
STORE_BYTES = 8 << 20    # ... or bytes, whichever comes first
BUSY_PAUSE = 0.25        # seconds to wait when a neighbour says it is busy
BUSY_TRIES = 40          # a neighbour busy this many times in a row is given up for this fetch


class Fetch:
    """One fetch of one DAG over a set of open clients {node id: Client}."""

    def __init__(self, store, clients: dict, score: dict, counters: dict, on_stored=None):
        self.store = store
        self.clients = dict(clients)
        self.score = score          # node id -> peer score (higher first)
        self.counters = counters    # the agent's fetched: blocks, bytes, failures
        self.on_stored = on_stored or (lambda: None)   # called after each batch is stored
        self.fetched = 0
        self.wanted: CID | None = None           # the block a reader waits for
        self._place: dict[CID, int] = {}         # the level being fetched: each block's place in it
        self._shares: list[_Share] = []          # the holders' queues in that level

    def want(self, cid: CID) -> None:
        """A reader waits for cid: the fetch goes on from there (now, or when it reaches cid's level)."""
        self.wanted = cid
        place = self._place.get(cid)
        if place is not None:
            for share in self._shares:
                share.go_on_from(place)

    async def dag(self, root: CID) -> int:
        """Fetch every block under root this node lacks; returns how many were fetched."""
        level = [root]
        while level:
            nodes = await self.level(level)
            level = [link.cid for cid in level if cid.codec == DAG_PB for link in parse_pbnode(nodes[cid]).links]
        return self.fetched

    async def level(self, cids: list[CID]) -> dict[CID, bytes]:
        """Make every block of cids present here; returns the bytes of the DAG-PB ones (for their links)."""
        def held():
            present, nodes = set(), {}
            for cid in cids:
                if self.store.has(cid):
                    present.add(cid)
                    if cid.codec == DAG_PB:
                        nodes[cid] = self.store.get(cid)
            return present, nodes
        present, nodes = await trio.to_thread.run_sync(held)
        missing = list(dict.fromkeys(c for c in cids if c not in present))
        if missing:
            if not self.clients:
                raise EdgeError(f"{missing[0]} is not here and no neighbour could be reached to ask")
            candidates = await self._holders(missing)
            await self._pull(candidates, nodes)
        return nodes

    async def _holders(self, missing: list[CID]) -> dict[CID, list[str]]:
        """Each missing block's holders, best scored first."""
        holders: dict[CID, list[str]] = {cid: [] for cid in missing}

        async def ask(node, client):
            try:
                for i in range(0, len(missing), MAX_HAVE):
                    part = missing[i:i + MAX_HAVE]
                    for cid, has in zip(part, await client.have(part)):
                        if has:
                            holders[cid].append(node)
            except (TransportError, PeerRefused) as exc:
                log.info("neighbour %s could not say what it holds: %s", node, exc)
        await _all((ask, node, client) for node, client in self.clients.items())
        for cid, nodes in holders.items():
            nodes.sort(key=lambda n: -self.score.get(n, 0.0))
            if not nodes:
                raise EdgeError(f"no neighbour holds {cid} (asked {len(self.clients)})")
        return holders

    async def _pull(self, candidates: dict[CID, list[str]], nodes: dict) -> None:
        """Get every block of candidates from its first holder; the ones a holder failed go to the next."""
        send, receive = trio.open_memory_channel(STORE_BLOCKS)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._store_all, receive)
                async with send:
                    await self._rounds(candidates, nodes, send)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _rounds(self, candidates: dict[CID, list[str]], nodes: dict, send) -> None:
        """Every block still wanted goes to its next holder, each holder's share pulled side by side; what a
        holder fails is left for the next round."""
        tried = {cid: 0 for cid in candidates}   # index of the holder to ask next
        self._place = {cid: i for i, cid in enumerate(candidates)}
        todo = list(candidates)
        try:
            while todo:
                parts: dict[str, list[CID]] = {}
                for cid in todo:
                    holders = candidates[cid]
                    if tried[cid] >= len(holders):
                        raise EdgeError(f"no neighbour could give {cid} (asked {len(self.clients)}, "
                                        f"{len(holders)} had it)")
                    parts.setdefault(holders[tried[cid]], []).append(cid)
                shares = {node: _Share(sorted(part, key=self._place.__getitem__), self._place)
                          for node, part in parts.items()}
                self._shares = list(shares.values())
                if self.wanted in self._place:
                    self.want(self.wanted)
                left: list[CID] = []

                async def run(node, share):
                    rest = await self._share(node, share, nodes, send)
                    for cid in rest:
                        tried[cid] += 1
                    left.extend(rest)
                await _all((run, node, share) for node, share in shares.items())
                todo = left
        finally:
            self._place, self._shares = {}, []

    async def _share(self, node: str, share: "_Share", nodes: dict, send) -> list[CID]:
        """Pull a share from node; returns the blocks it failed to give (empty when all came)."""
        busy = 0
        while True:
            got = 0
            try:
                async for data in self.clients[node].get_many(share, depth=WINDOW):
                    cid = share.arrived()
                    if cid.codec == DAG_PB:
                        nodes[cid] = data
                    await send.send((cid, data))
                    got += 1
                return []
            except PeerRefused as exc:
                share.ask_again()   # the ones in flight go back to the front, in order
                if exc.code == ErrorCode.BUSY and (got or busy < BUSY_TRIES):   # over its rate: slow down
                    busy = 0 if got else busy + 1
                    await trio.sleep(BUSY_PAUSE)
                    continue
                rest = share.rest()
                self._failed(node, rest[0], exc)
                return rest
            except TransportError as exc:   # unreachable, or it lied: its bytes did not match the CID
                rest = share.rest()
                self._failed(node, rest[0], exc)
                return rest

    async def _store_all(self, receive) -> None:
        """Store blocks as they come, in batches: a larger batch when the disk is slower than the network."""
        batch, size = [], 0
        async for cid, data in receive:
            batch.append((cid, data))
            size += len(data)
            if len(batch) >= STORE_BLOCKS or size >= STORE_BYTES or not receive.statistics().current_buffer_used:
                await self._store(batch)
                batch, size = [], 0
        if batch:
            await self._store(batch)

    def _failed(self, node: str, cid: CID, exc) -> None:
        self.counters["failures"] += 1
        log.warning("fetching %s from %s failed: %s", cid, node, exc)

    async def _store(self, batch) -> None:
        await trio.to_thread.run_sync(self.store.put_many, batch)   # each block was checked by get_many
        self.fetched += len(batch)
        self.counters["blocks"] += len(batch)
        self.counters["bytes"] += sum(len(data) for _, data in batch)
        self.on_stored()


class _Share:
    """One holder's blocks of a level as a queue that get_many reads one CID at a time: in the level's order,
    from the place a reader waits for on (then around to the start). Remembers what is in flight."""

    def __init__(self, cids: list[CID], place: dict[CID, int]):
        self.todo = collections.deque(cids)
        self.place = place
        self.flight: collections.deque = collections.deque()   # asked for, not yet arrived, oldest first

    def __iter__(self):
        return self

    def __next__(self) -> CID:
        if not self.todo:
            raise StopIteration
        cid = self.todo.popleft()
        self.flight.append(cid)
        return cid

    def arrived(self) -> CID:
        """The block get_many just yielded (it yields in the order it asked)."""
        return self.flight.popleft()

    def ask_again(self) -> None:
        self.todo.extendleft(reversed(self.flight))
        self.flight.clear()

    def rest(self) -> list[CID]:
        return [*self.flight, *self.todo]

    def go_on_from(self, place: int) -> None:
        """Make the first block at or after place (in the level's order) the next one asked for; those before
        it come after the last."""
        if not self.todo or self.place[self.todo[0]] == place:
            return
        items = sorted(self.todo, key=self.place.__getitem__)
        i = bisect.bisect_left([self.place[c] for c in items], place)
        self.todo = collections.deque(items[i:] + items[:i])


class Background:
    """A fetch running on its own that readers wait on block by block: a page can start on the first blocks
    while the rest arrive."""

    def __init__(self, root: CID):
        self.root = root
        self.batches = 0             # batches stored so far (read from reader threads)
        self.done = False
        self.error: BaseException | None = None
        self.fetch: Fetch | None = None   # set once the fetch has its neighbours
        self.wanted: CID | None = None
        self._changed = trio.Event()

    def want(self, cid: CID) -> None:
        """A reader waits for cid (it seeks, or asks for a range): fetch from there on next."""
        self.wanted = cid
        if self.fetch is not None:
            self.fetch.want(cid)

    def progressed(self) -> None:
        self.batches += 1
        self._changed.set()
        self._changed = trio.Event()

    def finish(self, error: BaseException | None = None) -> None:
        self.error, self.done = error, True
        self.progressed()

    async def wait(self, seen: int, timeout: float) -> bool:
        """Wait until a batch after the seen-th is stored; False when the fetch is over (or silent for timeout)
        and nothing new came."""
        with trio.move_on_after(timeout):
            while self.batches == seen and not self.done:
                await self._changed.wait()
        return self.batches != seen


async def _all(calls) -> None:
    """Run each (async function, *args) side by side; the first error (not a group) comes out."""
    try:
        async with trio.open_nursery() as nursery:
            for fn, *args in calls:
                nursery.start_soon(fn, *args)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
