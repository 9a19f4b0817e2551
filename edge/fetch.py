"""Fetching a DAG from neighbours, a level at a time.

For the blocks of a level this node lacks: ask every connected neighbour which it holds (one Have for up to
1,024 CIDs), then pull from every holder at once: the level is one queue, and each holder's puller takes the
next block that holder has, through a pipelined window (Client.get_many, which checks each block against its
CID). The best-scored holder starts first and a faster one takes more, so three neighbours on home uplinks
give about three uplinks' worth. Blocks are stored in batches, one durable write per batch, while the next
ones arrive. A holder that lies or cannot be reached is asked nothing more in this fetch and what it had in
flight goes back to the queue for the others; one that says BUSY is waited for. DAG-PB nodes are kept for their
links; leaves go to disk.

A reader waiting for one block (the gateway, a viewer who seeks) can move the fetch there: `want(cid)` makes
the queue go on from that block, so a range near the end of a large file or a segment in the middle of a
stream comes next, and the blocks skipped are fetched after the end (each block still fetched once).

A DAG from a neighbour is untrusted: a block is walked once however many links name it (a 3-block DAG of
1,000 links per node is 3 blocks, not a billion), a node may have at most MAX_LINKS links, a DAG at most
MAX_DEPTH levels and one fetch at most MAX_BLOCKS blocks; nodes are parsed in a worker thread (one at a time
over all fetches), never on the Trio thread.
"""

import bisect
import collections
import logging

import trio

from edge.errors import EdgeError, first_error
from edge.ipld.cid import DAG_PB, CID
from edge.ipld.dagpb import parse_pbnode
from edge.store.service import AsyncStore
from edge.transport.client import PeerRefused, TransportError
from edge.wire import MAX_HAVE, ErrorCode

log = logging.getLogger(__name__)
WINDOW = 16              # requests in flight to one neighbour
STORE_BLOCKS = 1024      # at most this many blocks per durable write ...
STORE_BYTES = 8 << 20    # ... or bytes, whichever comes first
RECEIVED = 32            # blocks between the pullers and the writer
BUSY_PAUSE = 0.25        # seconds to wait when a neighbour says it is busy
BUSY_TRIES = 40          # a neighbour busy this many times in a row is given up for this fetch
MAX_LINKS = 10_000       # links one DAG-PB node may have (Hearth's own have at most 174; a big directory more)
MAX_DEPTH = 64           # levels below the root (a balanced DAG of 174 links a node is 6 deep for 1 PB)
MAX_BLOCKS = 1 << 17     # distinct blocks one fetch may walk (32 GiB of 256 KiB chunks)
_PARSER = trio.lowlevel.RunVar("fetch_parser")   # the limiter of the threads parsing fetched nodes


class DagTooLarge(EdgeError):
    """A DAG from a neighbour is past a bound of this node (links per node, depth, blocks in one fetch)."""


def _parser() -> trio.CapacityLimiter:
    try:
        return _PARSER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(1)   # parsing is CPU: one thread at a time leaves the rest for serving
        _PARSER.set(limiter)
        return limiter


def _children(datas: list, seen: set, room: int, sizes: dict | None = None) -> list[CID]:
    """In a worker thread: the links of the DAG-PB nodes in datas that are not in seen, each once, in order
    (added to seen); DagTooLarge past MAX_LINKS in a node or room new blocks, DecodeError for a bad node. sizes,
    if given, gets each new link's Tsize (the bytes of the DAG under it, as its parent says: for progress only)."""
    out = []
    for data in datas:
        links = parse_pbnode(data).links
        if len(links) > MAX_LINKS:
            raise DagTooLarge(f"a node of this DAG has {len(links)} links; at most {MAX_LINKS} are fetched")
        for link in links:
            if link.cid not in seen:
                seen.add(link.cid)
                out.append(link.cid)
                if sizes is not None and link.tsize is not None:
                    sizes[link.cid] = link.tsize
                if len(out) > room:
                    raise DagTooLarge(f"this DAG has more than {MAX_BLOCKS} blocks; one fetch takes at most that")
    return out


class FetchError(EdgeError):
    """A fetch from neighbours did not bring the DAG; the subclass says why (the gateway answers by it)."""


class NoHolder(FetchError):
    """No neighbour holds a block (or none could be asked)."""


class HoldersFailed(FetchError):
    """The neighbours holding a block refused, lied (bytes that do not match the CID) or went away."""


class HoldersStalled(HoldersFailed):
    """The neighbours holding a block did not answer within the client's timeout."""


class Fetch:
    """One fetch of one DAG over a set of open clients {node id: Client}.

    Its progress (`progress()`): the DAG's total is known once the root is here (the root's bytes and its links'
    Tsizes, UnixFS's cumulative sizes); done counts the bytes of every block found here or fetched. The Tsizes
    come from the neighbours' blocks (checked against their CIDs, but a DAG's author may state any size): they
    only ever feed the progress shown, never a bound."""

    def __init__(self, store: AsyncStore, clients: dict, score: dict, counters: dict, on_stored=None, *,
                 downloads: dict | None = None, wear=None):
        self.store = store          # the store's async face: no SQLite or disk on the Trio thread
        self.clients = dict(clients)
        self.score = score          # node id -> peer score (higher first)
        self.counters = counters    # the agent's fetched: blocks, bytes, failures
        self.on_stored = on_stored or (lambda: None)   # called after each batch is stored
        self.downloads = downloads or {}   # node id -> the governor's download lane for its link class
        self.wear = wear                   # the SD-wear budget: once spent, nothing more is cached today
        self.fetched = 0
        self.wanted: CID | None = None           # the block a reader waits for
        self.served_by: collections.Counter = collections.Counter()   # node id -> blocks it gave
        self.rates: dict[str, list[float]] = {}  # node id -> [bytes it gave, seconds its puller ran]
        self._out: set[str] = set()              # neighbours that lied or failed: asked nothing more
        self._stalled: set[str] = set()          # ... of which those that only did not answer in time
        self._level: _Level | None = None        # the level being pulled
        self.root: CID | None = None
        self.total: int | None = None            # bytes of the whole DAG, once the root says
        self.done = 0                            # bytes of its blocks here (found, or fetched and stored)
        self.began = trio.current_time()
        self._sizes: dict[CID, int] = {}         # Tsize of each block of the level to come (as its parent says)

    def want(self, cid: CID) -> None:
        """A reader waits for cid: the fetch goes on from there (now, or when it reaches cid's level)."""
        self.wanted = cid
        if self._level is not None:
            self._level.go_on_from(cid)

    async def dag(self, root: CID) -> int:
        """Fetch every block under root this node lacks; returns how many were fetched. DagTooLarge (nothing
        fetched is lost) for a DAG past this node's bounds."""
        self.root = root
        with self.store.protect(root):   # making room never evicts what this fetch brings or relies on
            seen = {root}
            level, depth = [root], 0
            while level:
                nodes = await self.level(level)
                parents = [nodes[cid] for cid in level if cid.codec == DAG_PB]
                del nodes
                sizes: dict[CID, int] = {}
                level = await trio.to_thread.run_sync(_children, parents, seen, MAX_BLOCKS - len(seen), sizes,
                                                      limiter=_parser())
                if depth == 0:   # the root's own bytes and the DAGs under its links: the whole
                    self.total = max(self.done, (len(parents[0]) if parents else self.done) + sum(sizes.values()))
                self._sizes = sizes
                depth += 1
                if level and depth > MAX_DEPTH:
                    raise DagTooLarge(f"{root} is more than {MAX_DEPTH} levels deep; at most that is fetched")
        return self.fetched

    async def level(self, cids: list[CID]) -> dict[CID, bytes]:
        """Make every block of cids present here; returns the bytes of the DAG-PB ones (for their links)."""
        def held(store):
            present, nodes, size = set(), {}, 0
            for cid in cids:
                if store.has(cid):
                    present.add(cid)
                    if cid.codec == DAG_PB:
                        nodes[cid] = store.get(cid)
                        size += len(nodes[cid])
                    else:   # a leaf here: its size as its parent says (the DAG under a node is still walked)
                        size += self._sizes.get(cid, 0)
            return present, nodes, size
        present, nodes, size = await self.store.run(held, self.store.sync)
        self.done += size
        missing = list(dict.fromkeys(c for c in cids if c not in present))
        if missing:
            if not self.clients:
                raise NoHolder(f"{missing[0]} is not here and no neighbour could be reached to ask")
            candidates = await self._holders(missing)
            await self._pull(candidates, nodes)
        return nodes

    async def _holders(self, missing: list[CID]) -> dict[CID, list[str]]:
        """Each missing block's holders (the pullers, not this list, go best-scored first)."""
        holders: dict[CID, list[str]] = {cid: [] for cid in missing}

        async def ask(node, client):
            try:
                for i in range(0, len(missing), MAX_HAVE):
                    part = missing[i:i + MAX_HAVE]
                    for cid, has in zip(part, await _have(client, part)):
                        if has:
                            holders[cid].append(node)
            except (TransportError, PeerRefused) as exc:
                log.info("neighbour %s could not say what it holds: %s", node, exc)
        await _all((ask, node, client) for node, client in self.clients.items())
        for cid, nodes in holders.items():
            if not nodes:
                raise NoHolder(f"no neighbour holds {cid} (asked {len(self.clients)})")
        return holders

    async def _pull(self, candidates: dict[CID, list[str]], nodes: dict) -> None:
        """Pull every block of candidates from its holders while one task stores them in batches."""
        send, receive = trio.open_memory_channel(RECEIVED)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._store_all, receive)
                async with send:
                    await self._rounds(candidates, nodes, send)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _rounds(self, candidates: dict[CID, list[str]], nodes: dict, send) -> None:
        """Pull the level from every holder side by side; what a holder failed goes back to the queue, and a
        round ends when every puller has; the next round has those who can still give what is left."""
        level = self._level = _Level(candidates)
        if self.wanted is not None:
            level.go_on_from(self.wanted)
        try:
            while level.todo:
                for cid in level.todo:
                    if not level.holders[cid] - self._out:
                        kind = HoldersStalled if self._out and self._out <= self._stalled else HoldersFailed
                        raise kind(f"no neighbour could give {cid} (asked {len(self.clients)}, "
                                   f"{level.had[cid]} had it)")
                left = {node for cid in level.todo for node in level.holders[cid]} - self._out
                pullers = sorted(left, key=lambda n: -self.score.get(n, 0.0))   # the best one starts first
                # a small level is not all in the first puller's window: each starts with a part at most
                depth = min(WINDOW, max(2, -(-len(level.todo) // (2 * len(pullers)))))
                await _all((self._pull_from, node, level, nodes, send, depth) for node in pullers)
        finally:
            self._level = None

    async def _pull_from(self, node: str, level: "_Level", nodes: dict, send, depth: int = WINDOW) -> None:
        """Take blocks node holds from the level's queue until none is left for it, or it fails."""
        puller = _Puller(level, node)
        rate = self.rates.setdefault(node, [0, 0.0])
        began = trio.current_time()
        try:
            await self._pull_blocks(node, puller, nodes, send, depth, rate)
        finally:
            rate[1] += trio.current_time() - began

    async def _pull_blocks(self, node: str, puller: "_Puller", nodes: dict, send, depth: int, rate: list) -> None:
        busy = 0
        lane = self.downloads.get(node)
        while True:
            got = 0
            try:
                async for data in self.clients[node].get_many(puller, depth=depth):
                    cid = puller.arrived()
                    if cid.codec == DAG_PB:
                        nodes[cid] = data
                    self.served_by[node] += 1
                    rate[0] += len(data)
                    if lane is not None:   # the download cap for its link class: the next request waits
                        await lane.spend(len(data))
                    await send.send((cid, data))
                    got += 1
                return
            except PeerRefused as exc:
                if exc.code == ErrorCode.BUSY and (got or busy < BUSY_TRIES):   # over its rate: slow down
                    busy = 0 if got else busy + 1
                    puller.give_back()   # the others may take these meanwhile
                    await trio.sleep(BUSY_PAUSE)
                    continue
                if exc.code == ErrorCode.BUSY:
                    self._out.add(node)
                self._failed(node, puller, exc)
                return
            except TransportError as exc:   # unreachable, or it lied: its bytes did not match the CID
                self._out.add(node)
                if str(exc).startswith("no answer within"):   # the client's timeout (it has no type of its own)
                    self._stalled.add(node)
                self._failed(node, puller, exc)
                return

    async def _store_all(self, receive) -> None:
        """Store blocks as they come. One task writes whatever has arrived each time the disk is free: one block
        at a time when the disk keeps up, a larger batch (up to STORE_BLOCKS or STORE_BYTES) when it does not,
        so a fetch of many small blocks is not one durable write per handful. While both the batch being
        written and the next one are full, receiving waits (the pullers with it): memory stays bounded."""
        pending: list = []
        size = 0
        ended = False
        changed = trio.Event()

        def wake():
            nonlocal changed
            changed.set()
            changed = trio.Event()

        async def writer():
            nonlocal pending, size
            while pending or not ended:
                if not pending:
                    await changed.wait()
                    continue
                batch, pending, size = pending, [], 0
                wake()   # room for the receiver
                await self._store(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            try:
                async for cid, data in receive:
                    while len(pending) >= STORE_BLOCKS or size >= STORE_BYTES:
                        await changed.wait()
                    pending.append((cid, data))
                    size += len(data)
                    wake()
            finally:
                ended = True
                wake()

    def _failed(self, node: str, puller: "_Puller", exc) -> None:
        """node failed the oldest block it had in flight: that one is not asked of it again, and every block
        it had in flight goes back to the queue."""
        self.counters["failures"] += 1
        log.warning("fetching %s from %s failed: %s", puller.flight[0] if puller.flight else "a block", node, exc)
        puller.give_back(failed=True)

    async def _store(self, batch) -> None:
        if self.wear is not None:
            self.wear.check()   # today's SD-wear budget spent: WearBudgetSpent ends the fetch (serving goes on)
        await self.store.put_many(batch)   # each block was checked by get_many
        size = sum(len(data) for _, data in batch)
        self.fetched += len(batch)
        self.done += size
        self.counters["blocks"] += len(batch)
        self.counters["bytes"] += size
        self.on_stored()

    def progress(self) -> dict:
        """Where this fetch is: its root, the DAG's total bytes (None until the root is here), the bytes here so
        far, the percent, the rate of fetching (bytes a second since it began) and the seconds left at that rate."""
        elapsed = trio.current_time() - self.began
        fetched = sum(got for got, _ in self.rates.values())
        rate = fetched / elapsed if elapsed > 0 else 0.0
        total = self.total
        percent = None if not total else round(min(100.0, 100.0 * self.done / total), 1)
        eta = round((total - self.done) / rate, 1) if total and rate > 0 and total > self.done else None
        return {"root": str(self.root), "total": total, "done": self.done, "blocks": self.fetched,
                "percent": percent, "rate": round(rate), "eta": eta, "seconds": round(elapsed, 1),
                "neighbours": len(self.clients)}


class _Level:
    """The blocks of a level still to fetch: one queue that every holder's puller takes from, in the level's
    order from the place a reader waits for on (then around to the start)."""

    def __init__(self, holders: dict[CID, list[str]]):
        self.place = {cid: i for i, cid in enumerate(holders)}
        self.holders = {cid: set(nodes) for cid, nodes in holders.items()}   # who may still give each
        self.had = {cid: len(nodes) for cid, nodes in holders.items()}
        self.todo: collections.deque = collections.deque(holders)

    def take(self, node: str) -> CID | None:
        """The next block node holds, taken off the queue (None when there is none for it)."""
        for i, cid in enumerate(self.todo):
            if node in self.holders[cid]:
                del self.todo[i]
                return cid
        return None

    def give_back(self, cids, failed_by: str | None = None) -> None:
        """Blocks that were in flight go back to the front; the first is not asked of failed_by again."""
        if cids and failed_by is not None:
            self.holders[cids[0]].discard(failed_by)
        self.todo.extendleft(reversed(cids))

    def go_on_from(self, cid: CID) -> None:
        """Make the first block at or after cid (in the level's order) the next one taken; those before it
        come after the last."""
        place = self.place.get(cid)
        if place is None or not self.todo or self.place[self.todo[0]] == place:
            return
        items = sorted(self.todo, key=self.place.__getitem__)
        i = bisect.bisect_left([self.place[c] for c in items], place)
        self.todo = collections.deque(items[i:] + items[:i])


class _Puller:
    """One holder's view of the level as the iterator get_many reads, one CID per request; remembers what is
    in flight (get_many yields in the order it asked)."""

    def __init__(self, level: _Level, node: str):
        self.level, self.node = level, node
        self.flight: collections.deque = collections.deque()

    def __iter__(self):
        return self

    def __next__(self) -> CID:
        cid = self.level.take(self.node)
        if cid is None:
            raise StopIteration
        self.flight.append(cid)
        return cid

    def arrived(self) -> CID:
        return self.flight.popleft()

    def give_back(self, failed: bool = False) -> None:
        self.level.give_back(list(self.flight), self.node if failed else None)
        self.flight.clear()


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
        self.scope = trio.CancelScope()   # the runner fetches inside it; stop() ends the fetch
        self.stopped: BaseException | None = None   # why stop() ended it
        self.listeners: list = []         # called after each batch stored (the gateway charges a budget)
        self._changed = trio.Event()

    @property
    def bytes(self) -> int:
        """Bytes received from neighbours so far."""
        return sum(got for got, _ in self.fetch.rates.values()) if self.fetch is not None else 0

    def stop(self, why: BaseException) -> None:
        """End the fetch (readers then see why as its error)."""
        if self.stopped is None:
            self.stopped = why
        self.scope.cancel()

    def want(self, cid: CID) -> None:
        """A reader waits for cid (it seeks, or asks for a range): fetch from there on next."""
        self.wanted = cid
        if self.fetch is not None:
            self.fetch.want(cid)

    def attach(self, fetch: Fetch) -> None:
        """The fetch that brings this root: what readers want from now on (and already wanted) goes to it."""
        self.fetch = fetch
        if self.wanted is not None:
            fetch.want(self.wanted)

    def progressed(self) -> None:
        self.batches += 1
        self._changed.set()
        self._changed = trio.Event()
        for listener in list(self.listeners):
            listener(self)

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

    async def finished(self) -> int:
        """Wait for the whole fetch; the blocks it fetched, or its error."""
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        return self.fetch.fetched if self.fetch is not None else 0


async def _have(client, cids) -> tuple[bool, ...]:
    """client.have(cids), waiting while the neighbour says BUSY (a Have costs it a request per CID)."""
    for _ in range(BUSY_TRIES):
        try:
            return await client.have(cids)
        except PeerRefused as exc:
            if exc.code != ErrorCode.BUSY:
                raise
            await trio.sleep(BUSY_PAUSE)
    return await client.have(cids)


async def _all(calls) -> None:
    """Run each (async function, *args) side by side; the first error (not a group) comes out."""
    try:
        async with trio.open_nursery() as nursery:
            for fn, *args in calls:
                nursery.start_soon(fn, *args)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
