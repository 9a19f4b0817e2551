"""A reader's side of protected pins: the blocks of a pin rebuilt from any k pieces of each segment.

The manifest comes from this node's own kept copy, else from the neighbours (holders keep it): every neighbour is
asked at once; once a manifest signed by its owner that names the root asked for has come, the others have
MANIFEST_GRACE more to answer (edge/protect/manifest.py parse checks every signature; a holder cannot forge
one). The owner's newest version is used, or a newer one a repairer signed when the owner was gone, chained from
the owner's (chain()): only holders changed, signed by a holder the owner's manifest names. For each segment, k+1 of its
holders are asked for their whole piece at once, data pieces first (k data pieces need no decoding); each piece is
checked against its Merkle root as it arrives (a holder that lies is dropped for the rest of the read and another
holder is asked); once k have arrived the rest are cancelled, the segment is decoded (edge/protect/segments.py:
every block checked against its CID) and its blocks stored.
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
MANIFEST_GRACE = 1.0   # seconds the other neighbours may still answer once an owner's manifest has come


def chain(found) -> manifests.Manifest | None:
    """The newest manifest the owner's chain supports among found (parsed, signatures checked): the owner's
    newest, then each newer one signed by a repairer that changes only holders (manifest.check_update), the
    repairer being one of the holders the owner's manifest names (repair.py picks it among them when the owner is
    gone); None without an owner-signed one."""
    owners = [m for m in found if not manifests.check_update(None, m)]
    if not owners:
        return None
    base = max(owners, key=lambda m: m.version)
    current = base
    for update in sorted((m for m in found if m.signer != m.owner and m.owner == base.owner),
                         key=lambda m: m.version):
        if not manifests.check_update(current, update, repairers=base.holders):
            current = update
    return current


class ReadFailed(EdgeError):
    """The pin's blocks could not be rebuilt from its pieces; the message says why."""


class Reader:
    """Rebuilds protected pins: store (AsyncStore), identity, peers (PeerTable), data_dir, cert (fleet)."""

    def __init__(self, store, identity, peers, data_dir: str, cert: bytes | None = None):
        self.store, self.identity, self.peers, self.data_dir, self.cert = store, identity, peers, data_dir, cert

    async def read(self, root: CID) -> dict:
        """Store every block of the protected pin root from its pieces; a summary (segments, pieces and bytes
        fetched, pieces that failed, whether any segment needed decoding, seconds)."""
        t0 = time.monotonic()
        man = await self.manifest(root)
        stats = {"cid": str(root), "k": man.k, "m": man.m, "segments": len(man.segments), "pieces": 0, "bytes": 0,
                 "failed": 0, "decoded": 0, "blocks": 0}
        async with contextlib.AsyncExitStack() as stack:
            clients = await self._connect(stack, set(man.holders))
            liars: set[str] = set()
            for s in range(len(man.segments)):
                got = await self._segment(man, s, clients, liars, stats)
                seg = await self.store.run(segments.decode, got, man.k, man.m, man.segments[s].length)
                if any(p >= man.k for p in got):
                    stats["decoded"] += 1
                await self.store.put_many(list(seg.blocks), verify=True)   # CIDs (decode checked) and codecs
                stats["blocks"] += len(seg.blocks)
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
        man = chain(found)
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

        async def fetch(p: int, done: trio.CancelScope):
            node = man.holder_of(s, p)
            while True:
                if node not in liars:
                    try:
                        data = await clients[node].get_piece(seg.roots[p], size)
                        got[p] = data
                        stats["pieces"] += 1
                        stats["bytes"] += len(data)
                        if len(got) >= k:
                            done.cancel()
                        return
                    except PieceAnswerError as exc:   # bytes that do not match: not asked again in this read
                        log.warning("holder %s sent a bad piece %d of segment %d: %s", node, p, s, exc)
                        liars.add(node)
                    except TransportError as exc:
                        log.info("holder %s did not give piece %d of segment %d: %s", node, p, s, exc)
                    stats["failed"] += 1
                p = next(queue, None)   # another piece in its place
                if p is None:
                    return
                node = man.holder_of(s, p)
        async with trio.open_nursery() as nursery:
            for p in [next(queue, None) for _ in range(k + 1)]:
                if p is not None:
                    nursery.start_soon(fetch, p, nursery.cancel_scope)
        if len(got) < k:
            raise ReadFailed(f"segment {s} of {man.root}: only {len(got)} of the {k} pieces needed could be "
                             f"fetched ({len(order)} of its {man.n} holders reachable); try again when more are "
                             "back")
        return dict(sorted(got.items())[:k])
