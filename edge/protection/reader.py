"""A reader's side of protected pins: the blocks of a pin rebuilt from any k pieces of each segment.

The manifest comes from this node's own kept copy, else from the neighbours (holders keep it): every neighbour is
asked at once; once a manifest signed by its owner that names the root asked for has come, the others have
MANIFEST_GRACE more to answer (edge/protect/manifest.py parse checks every signature; a holder cannot forge
one). The owner's newest version is used, or a newer one a repairer signed when the owner was gone, chained from
the owner's (edge/protect/manifest.py chain): only holders changed, signed by a holder the owner's manifest names.
For each segment, k+1 of its holders are asked for their whole piece at once, data pieces first (k data pieces
need no decoding); each piece is checked against its Merkle root as it arrives (a holder that lies is dropped for
the rest of the read and another holder is asked; one whose piece is late, past a few times what the pieces so far
took, gets a spare asked beside it, so a stopped holder costs seconds, not a request's timeout); once k have
arrived the rest are cancelled, the segment is decoded (edge/protect/segments.py: every block checked against its
CID) and its blocks stored.
"""

import contextlib
import logging
import time

import trio

from edge.errors import DecodeError, EdgeError
from edge.ipld.cid import CID
from edge.protect import manifest as manifests
from edge.protect import segments
from edge.protection.owner import kept_manifests
from edge.transport.client import TransportError, open_client
from edge.transport.piececlient import PieceAnswerError

log = logging.getLogger(__name__)
HELLO_TIMEOUT = 5.0
PIECE_TIMEOUT = 30.0   # seconds one chunk of a piece may take
HEDGE_BASE = 2.0       # seconds, plus three times a piece's expected transfer, before one more holder is asked
MIN_RATE = 1 << 20     # bytes a second a piece is expected at before any has been measured in this read
MANIFEST_GRACE = 1.0   # seconds the other neighbours may still answer once an owner's manifest has come


class ReadFailed(EdgeError):
    """The pin's blocks could not be rebuilt from its pieces; the message says why."""


class Reader:
    """Rebuilds protected pins: store (AsyncStore), identity, peers (PeerTable), data_dir, cert (fleet)."""

    def __init__(self, store, identity, peers, data_dir: str, cert: bytes | None = None):
        self.store, self.identity, self.peers, self.data_dir, self.cert = store, identity, peers, data_dir, cert

    async def read(self, root: CID, on_stored=None, wanted=lambda: None) -> dict:
        """Store every block of the protected pin root from its pieces; a summary (segments, pieces and bytes
        fetched, pieces that failed, whether any segment needed decoding, seconds).

        Segments are stored one at a time in DAG order, on_stored(that summary so far) called after each, so a
        reader waiting for a block (the gateway's body, a player) goes on as soon as its segment is decoded, not
        when the whole pin is; wanted() names the block such a reader waits for (a seek), whose segment comes
        next. The pieces of the next segment arrive while this one is decoded (in a worker thread)."""
        t0 = time.monotonic()
        man = await self.manifest(root)
        stats = {"cid": str(root), "k": man.k, "m": man.m, "segments": len(man.segments), "pieces": 0, "bytes": 0,
                 "failed": 0, "decoded": 0, "blocks": 0, "stored": 0, "hedged": 0, "rate": 0.0}
        remaining = list(range(len(man.segments)))
        async with contextlib.AsyncExitStack() as stack:
            clients = await self._connect(stack, set(man.holders))
            liars: set[str] = set()
            send, receive = trio.open_memory_channel(1)   # one segment's pieces ahead of the decoding

            async def pieces():
                async with send:
                    while remaining:
                        s = _next_segment(man, remaining, wanted())
                        remaining.remove(s)
                        await send.send((s, await self._segment(man, s, clients, liars, stats)))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pieces)
                async with receive:
                    async for s, got in receive:
                        seg = await self.store.run(segments.decode, got, man.k, man.m, man.segments[s].length)
                        if any(p >= man.k for p in got):
                            stats["decoded"] += 1
                        await self.store.put_many(list(seg.blocks), verify=True)   # CIDs (decode checked), codecs
                        stats["blocks"] += len(seg.blocks)
                        stats["stored"] += seg.size
                        if on_stored is not None:
                            on_stored(stats)
        stats["seconds"] = round(time.monotonic() - t0, 3)
        return stats

    async def manifest(self, root: CID) -> manifests.Manifest:
        """The pin's manifest: this node's own, else the first valid one a neighbour gives."""
        for man in await trio.to_thread.run_sync(kept_manifests, self.data_dir):
            if man.root == root:
                return man
        found: list[manifests.Manifest] = []

        async def ask(peer, first_found):
            try:
                async with open_client(self.identity, peer.endpoint(), peer.node, cert=self.cert,
                                       timeout=HELLO_TIMEOUT) as client:
                    if "pieces" not in client.welcome.caps:
                        return
                    raw = await client.get_manifest(root)
                man = await trio.to_thread.run_sync(manifests.parse, raw)
            except (TransportError, PieceAnswerError, DecodeError, EdgeError) as exc:
                log.debug("no manifest of %s from %s: %s", root, peer.node, exc)
                return
            if man.root != root:
                return
            found.append(man)
            if man.signer == man.owner:
                first_found()

        async with trio.open_nursery() as nursery:
            def first_found():   # the others get a moment more: one may have a repairer's newer version
                nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline,
                                                    trio.current_time() + MANIFEST_GRACE)
            for peer in list(self.peers.peers.values()):
                if peer.rejected is None:
                    nursery.start_soon(ask, peer, first_found)
        man = manifests.chain(found)
        if man is None:
            raise ReadFailed(f"no neighbour keeps a manifest of {root}: it is not a protected pin here, or its "
                             "holders are away")
        return man

    async def _connect(self, stack, nodes: set[str]) -> dict:
        """Clients of the holders that are neighbours now and answer: all tried at once, then opened in stack."""
        reachable = []

        async def ask(peer):
            try:
                async with open_client(self.identity, peer.endpoint(), peer.node, cert=self.cert,
                                       timeout=HELLO_TIMEOUT):
                    reachable.append(peer)
            except (TransportError, EdgeError, OSError) as exc:
                log.info("holder %s is away: %s", peer.node, exc)
        async with trio.open_nursery() as nursery:
            for node in nodes:
                peer = self.peers.peers.get(node)
                if peer is not None and peer.rejected is None:
                    nursery.start_soon(ask, peer)
        clients = {}
        for peer in reachable:
            with contextlib.suppress(TransportError, EdgeError, OSError):
                clients[peer.node] = await stack.enter_async_context(open_client(
                    self.identity, peer.endpoint(), peer.node, cert=self.cert, timeout=PIECE_TIMEOUT))
        return clients

    async def _segment(self, man, s: int, clients: dict, liars: set, stats: dict) -> dict[int, bytes]:
        """k verified pieces of segment s: k+1 asked at once (data pieces first), one more for each that fails."""
        seg, size, k = man.segments[s], man.piece_size(s), man.k
        order = [p for p in range(man.n) if man.holder_of(s, p) in clients]
        got: dict[int, bytes] = {}
        queue = iter(order)

        async def spare(after: float, waiting: trio.CancelScope, nursery):
            """A piece asked `after` seconds ago has not come (a holder stopped or gone quiet): ask one more
            beside it, rather than wait out the timeout of a request."""
            with waiting:
                await trio.sleep(after)
            if not waiting.cancelled_caught and len(got) < k:
                p = next(queue, None)
                if p is not None:
                    stats["hedged"] += 1
                    nursery.start_soon(fetch, p, nursery)

        async def fetch(p: int, nursery):
            node = man.holder_of(s, p)
            while True:
                if node not in liars:
                    waiting = trio.CancelScope()
                    nursery.start_soon(spare, _hedge(size, stats), waiting, nursery)
                    t0 = time.monotonic()
                    try:
                        data = await clients[node].get_piece(seg.roots[p], size)
                        got[p] = data
                        stats["pieces"] += 1
                        stats["bytes"] += len(data)
                        rate = len(data) / max(time.monotonic() - t0, 1e-3)
                        stats["rate"] = rate if not stats.get("rate") else (stats["rate"] + rate) / 2
                        if len(got) >= k:
                            nursery.cancel_scope.cancel()   # the extra request (and any spare) ends here
                        return
                    except PieceAnswerError as exc:   # bytes that do not match: not asked again in this read
                        log.warning("holder %s sent a bad piece %d of segment %d: %s", node, p, s, exc)
                        liars.add(node)
                    except TransportError as exc:
                        log.info("holder %s did not give piece %d of segment %d: %s", node, p, s, exc)
                    finally:
                        waiting.cancel()
                    stats["failed"] += 1
                p = next(queue, None)   # another piece in its place
                if p is None:
                    return
                node = man.holder_of(s, p)
        async with trio.open_nursery() as nursery:
            for p in [next(queue, None) for _ in range(k + 1)]:
                if p is not None:
                    nursery.start_soon(fetch, p, nursery)
        if len(got) < k:
            raise ReadFailed(f"segment {s} of {man.root}: only {len(got)} of the {k} pieces needed could be "
                             f"fetched ({len(order)} of its {man.n} holders reachable); try again when more are "
                             "back")
        return dict(sorted(got.items())[:k])


def _next_segment(man, remaining: list[int], want) -> int:
    """The segment to fetch next: the one holding the block a reader waits for, else the first left (DAG order)."""
    if want is not None:
        for s in man.segment_of(want):
            if s in remaining:
                return s
    return remaining[0]


def _hedge(size: int, stats: dict) -> float:
    """Seconds to wait for a piece of size bytes before asking one more holder beside it: the pieces measured so
    far in this read (their mean rate) set what is slow, so a stopped holder costs seconds, not a timeout."""
    return HEDGE_BASE + 3 * size / max(stats.get("rate") or 0.0, MIN_RATE)
