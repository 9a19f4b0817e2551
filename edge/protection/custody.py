"""When the owner of a protected pin is gone, a holder repairs it (issue 16).

Every holder keeps the manifests of the pins it holds pieces of, and every RUN_EVERY checks who among the pin's
owner and holders it can reach (a hello each). While the owner has been reachable within `repair_after` the owner
repairs (edge/protection/repair.py) and nothing happens here. Otherwise edge/protect/repair.py's `repairer` names
one online holder, the same at every holder (the smallest H(root CID ‖ node id)); only that one acts. It plans
as the owner would (placement away from the segment's healthy holders and the owner), sends each new holder a
repair order it signs (edge/protection/newholder.py: the new holder fetches k pieces and computes its own, under
this node's lease), and signs the next manifest version: a change of holders alone, which readers accept chained from the owner's
(edge/protect/manifest.py chain). The new holders keep that manifest for readers.

Leases: with the owner gone nobody else renews the pieces it placed, so the chosen holder renews every piece of
the pin daily (RENEW_EVERY), at every holder and its own; the holder's piece store takes a renewal from a node
the pin's verified manifest chain names as a holder (edge/store/pieces.py renew), and one that lacks the chain is
handed the owner's manifest and the newest version first, then asked again. A pin whose owner is gone for good
lives as long as its holders do, not 30 days.

Holders judge reachability by their own hellos only (no audits of each other): a holder that lies about its
pieces is the owner's audits' business, and readers check every piece against its root anyway.
"""

import contextlib
import logging
import random
import time

import trio

from edge.errors import DecodeError, EdgeError
from edge.ipld.cid import parse_cid
from edge.protect import manifest as manifests
from edge.protect import repair as planning
from edge.protection import owner as owners
from edge.protection.repair import repair_segment
from edge.service import Handle
from edge.store.pieces import LEASE_MAX
from edge.transport.client import TransportError, open_client
from edge.transport.piececlient import PieceAnswerError

log = logging.getLogger(__name__)
RUN_EVERY = 3600.0   # seconds between a holder's checks of the pins it holds pieces of
RENEW_EVERY = 86400.0   # seconds between the chosen repairer's renewals of an absent owner's pin (leases run 30 days)


class Custody:
    """A holder's care for pins whose owner is gone: pieces (PieceStore), identity, peers (PeerTable), cert."""

    def __init__(self, pieces, identity, peers, cert: bytes | None = None, *,
                 repair_after: float = planning.REPAIR_AFTER, threshold: float = planning.THRESHOLD,
                 upload: int = 0, clock=time.time, rng=None, operator: str = "", endpoint: str | None = None):
        self.pieces, self.identity, self.peers, self.cert = pieces, identity, peers, cert
        self.operator = operator   # declared in each hello: the holders learn this node's operator (pieces.py)
        self.endpoint = endpoint   # this node's transport, named as a source of its own pieces
        self.repair_after, self.threshold, self.upload, self.clock = repair_after, threshold, upload, clock
        self.rng = rng or random.SystemRandom()
        self.seen: dict[str, float] = {}                       # node -> when this node last reached it
        self.updates: dict[str, manifests.Manifest] = {}       # pin -> the newest manifest this node signed
        self.renewed_at: dict[str, float] = {}                 # pin -> when this node last renewed its leases
        self.stats = {"repaired": 0, "bytes_fetched": 0, "bytes_pushed": 0, "renewed": 0}

    async def run(self) -> int:
        """One pass over every pin held here; the pieces this node rebuilt and placed."""
        done = 0
        for pin in sorted({h.pin for h in await trio.to_thread.run_sync(self.pieces.pieces)}):
            chained = await trio.to_thread.run_sync(self._manifest, pin)
            if chained is not None and chained[0].owner != self.identity.node_id:
                try:
                    done += await self._care(*chained)
                except (TransportError, PieceAnswerError, EdgeError) as exc:
                    log.warning("repair of %s for its absent owner failed (tried again later): %s", pin, exc)
        self.stats["repaired"] += done
        return done

    def _manifest(self, pin: str):
        """(the newest manifest of pin the owner's chain supports, the owner's newest it chains from), from every
        manifest of pin kept here and this node's own update; None without an owner-signed one (blocking: reads
        the piece store's database)."""
        found = []
        for raw in self.pieces.manifests_of(parse_cid(pin)):
            try:
                found.append(manifests.parse(raw))
            except (DecodeError, EdgeError, ValueError) as exc:
                log.info("a manifest of %s kept here is not usable: %s", pin, exc)
        if pin in self.updates:
            found.append(self.updates[pin])
        newest = manifests.chain(found)
        if newest is None:
            return None
        return newest, max((m for m in found if m.signer == m.owner == newest.owner), key=lambda m: m.version)

    async def _care(self, man, base) -> int:
        now, me = self.clock(), self.identity.node_id
        holders = [[man.holder_of(s, p) for p in range(man.n)] for s in range(len(man.segments))]
        nodes = {man.owner} | set(man.holders)
        reached = await self._reachable(nodes - {me})
        states = {}
        for node in nodes:
            if node in reached or node == me:
                self.seen[node] = now
            states[node] = planning.NodeState(node in reached or node == me, self.seen.setdefault(node, now))
        if planning.repairer(bytes(man.root), man.owner, holders, states, now, self.repair_after) != me:
            return 0   # the owner is about (it repairs), or another holder is the one chosen
        async with contextlib.AsyncExitStack() as stack:
            clients = await owners.eligible(self.identity, self.peers, self.cert, stack)
            candidates = [owners._candidate(self.peers.peers.get(node), c) for node, c in clients.items()
                          if node != man.owner]
            plan = planning.plan(holders, man.k, [man.piece_size(s) for s in range(len(man.segments))], states,
                                 candidates, self.rng, now, repair_after=self.repair_after, threshold=self.threshold,
                                 owner=man.owner)
            by_segment: dict[int, list] = {}
            for r in plan.repairs:
                by_segment.setdefault(r.segment, []).append(r)
            moves = {}
            for s, repairs in by_segment.items():
                moves.update(await repair_segment(man, s, repairs, clients, set(), self.stats, self.identity,
                                                  self._endpoint, self.upload))
            if moves:
                new = manifests.sign(manifests.with_holders(man, moves, int(now)), self.identity)
                self.updates[str(man.root)] = new
                raw = manifests.serialize(new)
                for node in set(moves.values()):   # they hold this node's pieces now: they keep its manifest
                    with contextlib.suppress(TransportError, PieceAnswerError, EdgeError):
                        await clients[node].put_manifest(man.root, raw)
                log.info("rebuilt %d pieces of %s for its absent owner (version %d)", len(moves), man.root,
                         new.version)
                man = new
            await self._renew(man, base, clients)
        return len(moves)

    def _endpoint(self, node: str):
        """A source's endpoint for a new holder; this node's own is its transport's (set by the agent)."""
        if node == self.identity.node_id:
            return self.endpoint
        peer = self.peers.peers.get(node)
        return None if peer is None else peer.endpoint()

    async def _reachable(self, nodes) -> set[str]:
        reached = set()

        async def hello(peer):
            with contextlib.suppress(TransportError, EdgeError, OSError):
                async with open_client(self.identity, peer.endpoint(), peer.node, cert=self.cert,
                                       timeout=owners.HELLO_TIMEOUT, operator=self.operator):
                    reached.add(peer.node)
        async with trio.open_nursery() as nursery:
            for node in nodes:
                peer = self.peers.peers.get(node)
                if peer is not None and peer.rejected is None:
                    nursery.start_soon(hello, peer)
        return reached

    async def _renew(self, man, base, clients) -> None:
        """Renew the lease of every piece of man at its holder (this node included), at most every RENEW_EVERY:
        the owner is gone, so the chosen repairer keeps its pin alive. A holder that cannot yet tell this node is
        a holder the chain names is handed the owner's manifest and the newest, and asked again
        (edge/store/pieces.py renew takes renewals from such custodians, verified)."""
        pin, me, now = str(man.root), self.identity.node_id, self.clock()
        if now - self.renewed_at.get(pin, -RENEW_EVERY) < RENEW_EVERY:
            return
        self.renewed_at[pin] = now
        lease = int(time.time() + LEASE_MAX)
        raws = [manifests.serialize(m) for m in ((base,) if man == base else (base, man))]
        by_holder: dict[str, list[bytes]] = {}
        for s, seg in enumerate(man.segments):
            for p, root in enumerate(seg.roots):
                by_holder.setdefault(man.holder_of(s, p), []).append(root)
        for node, roots in sorted(by_holder.items()):
            try:
                if node == me:
                    found = await trio.to_thread.run_sync(self.pieces.renew, me, roots, lease)
                elif node in clients:
                    found = await clients[node].renew_leases(roots, lease)
                    if not all(found):   # it cannot tell this node is a custodian yet: the chain, then again
                        for raw in raws:
                            await clients[node].put_manifest(man.root, raw)
                        found = await clients[node].renew_leases(roots, lease)
                else:
                    continue   # away now: tried again at the next pass past RENEW_EVERY
            except (TransportError, PieceAnswerError, EdgeError) as exc:
                log.info("renewing the leases of %s at %s failed: %s", pin, node, exc)
                continue
            self.stats["renewed"] += sum(found)


async def serve_custody(custody: Custody, every: float = RUN_EVERY, *, task_status=trio.TASK_STATUS_IGNORED):
    """A holder's pass over its pins every `every` seconds; a pass that fails is logged, the next runs."""
    task_status.started(Handle("custody", lambda: dict(custody.stats)))
    while True:
        await trio.sleep(every)
        try:
            await custody.run()
        except Exception:   # noqa: BLE001 - one service among the agent's: it fails alone
            log.exception("the custody pass failed")


async def start_custody(start, agent, config) -> None:
    """The agent's wiring: this node's care for the pins it holds pieces of, with its repair_after and upload
    limit."""
    await start("custody", serve_custody, Custody(agent.pieces, agent.identity, agent.peers, agent.cert,
                                                  repair_after=config.repair_after, upload=config.upload_limit,
                                                  operator=config.operator))
