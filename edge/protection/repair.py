"""The owner's repair of its protected pins over the network (issue 16), driven by edge/protect/repair.py's plan.

Every audit's results (owner.py health(), every 6 h and on `hearth pin ls`) are recorded here: a holder that
answered is online now, and each proof it gave feeds its reputation (edge/protect/reputation.py: alpha/beta with
forgetting), which the placement score reads; a holder that did not answer keeps the time it was last reached.
Between audits, every 10 minutes, the peer table says who is online (watch): a holder it no longer lists is away,
so one gone past repair_after is repaired then, not at the next audit round.
A piece is unhealthy when its holder has been away longer than `repair_after` (config, default 4 h), when its
last audit failed, or when its holder's reputation fell below the disqualifying score. When a segment's health
(healthy − k)/(n − k) falls below the threshold (0.75), new holders are chosen by placement (distinct nodes and
operators from the segment's healthy holders, never this node) and each lost piece is rebuilt.

Who computes the rebuilt piece: its new holder. This node signs a repair order for it (edge/protect/order.py)
and sends it with the manifest and the segment's reachable holders (RepairPiece); the new holder fetches k pieces
itself, computes only its own (edge/store/stripe.py rebuild_piece, checked against its root in the manifest: a
rebuilt piece is byte-identical to the lost one), keeps it under this node's lease and signs a receipt
(edge/protection/newholder.py). A repair thus moves k × the piece size from the sources to the new holder and
nothing through this node. The orders are paced by this node's upload limit. Then the next
version of the manifest (only holders changed) is signed, kept, and handed to every holder; the old holder of a
moved piece is told to release it (best effort: its lease ends it otherwise).
"""

import contextlib
import logging
import time

import trio

from edge.errors import EdgeError
from edge.protect import manifest as manifests
from edge.protect import order as orders
from edge.protect import repair as planning
from edge.protect.placement import Candidate
from edge.protect.reputation import Reputation
from edge.protection.owner import _candidate, kept_manifests
from edge.service import Handle
from edge.transport.client import TransportError, open_client
from edge.transport.piececlient import PieceAnswerError

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT = 10.0   # seconds a holder may take to take a new manifest version
MAX_MOVES = 65536        # moves heard and not yet applied


class Repairs:
    """Health tracking and repair of protector's (owner.py Protector) pins. repair_after and threshold as in
    edge/protect/repair.py; upload: bytes per second the pushes may take (0: no limit); clock: unix seconds."""

    def __init__(self, protector, repair_after: float = planning.REPAIR_AFTER,
                 threshold: float = planning.THRESHOLD, upload: int = 0, clock=time.time):
        self.protector, self.repair_after, self.threshold = protector, repair_after, threshold
        self.upload, self.clock = upload, clock
        self.seen: dict[str, float] = {}                 # holder -> when it last answered an audit
        self.online: dict[str, bool] = {}                # holder -> whether it answered the last one
        self.reputation: dict[str, Reputation] = {}
        self.failed: dict[str, set] = {}                 # root CID -> (segment, piece) whose last audit failed
        self.stats = {"repaired": 0, "bytes_fetched": 0, "bytes_pushed": 0, "waiting": 0}
        self._lock = trio.Lock()
        self._moves: list = []                           # (sender, wire Moved) heard from leaving holders
        self._token = trio.lowlevel.current_trio_token()
        self._wake = trio.Event()

    def moved(self, sender: str, msg) -> None:
        """From the transport's serving thread: a leaving holder's Moved, its receipt checked there. Never
        blocks; past MAX_MOVES waiting, more are dropped (the owner's audits and repair still notice them)."""
        if len(self._moves) >= MAX_MOVES:
            log.warning("%d moved pieces wait to be applied; the one from %s is left to repair", MAX_MOVES, sender)
            return
        self._moves.append((sender, msg))   # list.append is atomic; serve() takes the list on the Trio side
        with contextlib.suppress(trio.RunFinishedError):   # the agent is stopping
            self._token.run_sync_soon(self._wake.set)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Publish the manifests that moves heard from leaving holders change, as they come."""
        task_status.started(Handle("repairs", lambda: dict(self.stats)))
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.apply_moves()
            except Exception:   # noqa: BLE001 - one bad round must not end the service
                log.exception("applying moved pieces failed")

    async def apply_moves(self) -> int:
        """Every move heard so far applied to this node's manifests: a move counts only when the sender is the
        piece's holder in the kept manifest and names that piece's root; the next version is signed, kept and
        handed to the holders. The pieces moved."""
        async with self._lock:
            moves, self._moves = self._moves, []
            if not moves:
                return 0
            done = 0
            for man in await trio.to_thread.run_sync(kept_manifests, self.protector.data_dir):
                change = {}
                for sender, msg in moves:
                    s, p = msg.segment, msg.index
                    if msg.manifest != man.root or s >= len(man.segments) or p >= man.n:
                        continue
                    others = {man.holder_of(s, q) for q in range(man.n) if q != p}
                    if man.holder_of(s, p) == sender and man.segments[s].roots[p] == msg.root and \
                            msg.to not in others and msg.to != self.protector.identity.node_id:
                        change[(s, p)] = msg.to
                if change:
                    await self._publish(man, change)
                    self.stats["moved"] = self.stats.get("moved", 0) + len(change)
                    done += len(change)
            return done

    async def _publish(self, man, change: dict, clients=None) -> None:
        """The next version of man with change applied: signed, kept, handed to every holder it names."""
        p = self.protector
        new = manifests.sign(manifests.with_holders(man, change, int(self.clock())), p.identity)
        raw = manifests.serialize(new)
        await trio.to_thread.run_sync(p._keep, man.root, raw)
        for node in new.holders:
            try:
                if clients is not None and node in clients:
                    await clients[node].put_manifest(man.root, raw)
                    continue
                peer = p.peers.peers.get(node)
                if peer is None:
                    continue
                async with open_client(p.identity, peer.endpoint(), node, cert=p.cert, timeout=PUBLISH_TIMEOUT) as c:
                    await c.put_manifest(man.root, raw)
            except (TransportError, PieceAnswerError, EdgeError) as exc:
                log.info("could not hand manifest version %d of %s to %s: %s", new.version, man.root, node, exc)
        return new

    def record(self, pins: list[dict]) -> None:
        """One audit round's results (owner.py health()) into the holders' states and reputations."""
        now = self.clock()
        for pin in pins:
            bad = set()
            for node, r in pin["holders"].items():
                self.online[node] = bool(r["reached"])
                if r["reached"]:
                    self.seen[node] = now
                else:
                    self.seen.setdefault(node, now)   # first noticed away now: its grace runs from here
                rep = self.reputation.get(node, Reputation())
                for passed in [True] * r["passed"] + [False] * r["failed"]:
                    rep = rep.record(passed)
                self.reputation[node] = rep
                bad |= {tuple(sp) for sp in r["bad"]}
            self.failed[pin["cid"]] = bad

    def sweep(self, kept, peers) -> None:
        """The peer table's word between audit rounds, for the holders of kept (this node's manifests): a holder
        the table lists is online now; one it no longer lists (silent past the table's expiry, or said goodbye)
        is away since it was last seen, or since now when this node never saw it."""
        now = self.clock()
        for man in kept:
            for node in man.holders:
                peer = peers.peers.get(node)
                if peer is not None and peer.rejected is None:
                    self.online[node], self.seen[node] = True, now
                else:
                    self.online[node] = False
                    self.seen.setdefault(node, now)

    async def watch(self) -> int:
        """Between audit rounds (owner.py serve_renewals, every WATCH_EVERY): the holders' states from the peer
        table, then repair where a holder has been away past repair_after, without waiting up to 6 h for the
        next audit. Nothing goes on the network while every segment is healthy. The pieces rebuilt."""
        kept = await trio.to_thread.run_sync(kept_manifests, self.protector.data_dir)
        self.sweep(kept, self.protector.peers)   # on the Trio thread: the peer table is only touched here
        return await self.run()

    def reputation_of(self, node: str) -> Reputation:
        return self.reputation.get(node, Reputation())

    def state(self, node: str, now: float) -> planning.NodeState:
        """A holder's state; one never audited yet counts as online (nothing speaks against it)."""
        rep = self.reputation.get(node, Reputation())
        return planning.NodeState(self.online.get(node, True), self.seen.get(node, now), rep.disqualified)

    async def run(self) -> int:
        """Repair every kept pin whose segments fell below the threshold; the pieces rebuilt and placed."""
        await self.apply_moves()   # pieces that left with their holder are not lost
        async with self._lock:
            done = 0
            for man in await trio.to_thread.run_sync(kept_manifests, self.protector.data_dir):
                done += await self._repair_pin(man)
            return done

    async def _repair_pin(self, man) -> int:
        now = self.clock()
        holders = [[man.holder_of(s, p) for p in range(man.n)] for s in range(len(man.segments))]
        nodes = {node for seg in holders for node in seg}
        states = {node: self.state(node, now) for node in nodes}
        failed = self.failed.get(str(man.root), set())
        healths = [planning.health(sum(planning.piece_healthy(states[node], now, self.repair_after, (s, p) in failed)
                                       for p, node in enumerate(seg)), man.k, man.n)
                   for s, seg in enumerate(holders)]
        if min(healths) >= self.threshold:
            return 0
        p = self.protector
        async with contextlib.AsyncExitStack() as stack:
            clients = await p._eligible(stack)
            for node in nodes:   # a holder that is not reachable now is away, whatever the last audit said
                if node not in clients and states[node].online:
                    states[node] = planning.NodeState(False, self.seen.get(node, now), states[node].disqualified)
                    self.online[node] = False
            shunned = {holders[s][q] for s, q in failed}   # a holder that failed an audit takes no new piece
            candidates = [self._candidate(node, c) for node, c in clients.items() if node not in shunned]
            plan = planning.plan(holders, man.k, [man.piece_size(s) for s in range(len(man.segments))], states,
                                 candidates, p.rng, now, repair_after=self.repair_after, threshold=self.threshold,
                                 failed=failed, owner=p.identity.node_id)
            self.stats["waiting"] = len(plan.waiting)
            by_segment: dict[int, list] = {}
            for r in plan.repairs:
                by_segment.setdefault(r.segment, []).append(r)
            moves: dict[tuple[int, int], str] = {}
            for s, repairs in by_segment.items():
                try:
                    moves.update(await self._repair_segment(man, s, repairs, clients, failed))
                except (TransportError, PieceAnswerError, EdgeError) as exc:
                    log.warning("repair of segment %d of %s failed (retried at the next audit): %s", s, man.root, exc)
            if not moves:
                return 0
            new = await self._publish(man, moves, clients)
            for (s, q) in moves:
                failed.discard((s, q))
                old = man.holder_of(s, q)
                if old in clients:   # the damaged or stale copy is freed now (else its lease ends it)
                    with contextlib.suppress(TransportError, PieceAnswerError, EdgeError):
                        await clients[old].release_pieces([man.segments[s].roots[q]])
        self.stats["repaired"] += len(moves)
        log.info("repaired %d pieces of %s (version %d)", len(moves), man.root, new.version)
        return len(moves)

    async def _repair_segment(self, man, s: int, repairs, clients, failed) -> dict:
        return await repair_segment(man, s, repairs, clients, failed, self.stats, self.protector.identity,
                                    self._endpoint, self.upload)

    def _endpoint(self, node: str):
        peer = self.protector.peers.peers.get(node)
        return None if peer is None else peer.endpoint()

    def _candidate(self, node: str, client) -> Candidate:
        c = _candidate(self.protector.peers.peers.get(node), client)
        return Candidate(c.node, c.operator, c.share, c.free, c.uptime, c.rtt, self.reputation_of(node))


async def repair_segment(man, s: int, repairs, clients, failed, stats: dict, identity, endpoint_of,
                         upload: int = 0) -> dict:
    """Each lost piece of segment s computed by its new holder: a signed repair order (edge/protect/order.py)
    and the manifest go to it with RepairPiece, naming as sources the segment's holders that are reachable
    (endpoint_of(node) -> endpoint or None), the plan's sources first; it fetches k of their pieces, computes its
    own, keeps it under identity's lease and signs a receipt (edge/protection/newholder.py). The orders are paced
    by upload (bytes per second; 0: no limit) at k × the piece size each: the traffic they cause.
    {(s, piece): new holder}."""
    size = man.piece_size(s)
    raw = manifests.serialize(man)
    lost = {r.piece for r in repairs}
    order = [q for q, _ in repairs[0].sources] + [q for q in range(man.n) if q not in lost]
    sources = []
    for q in dict.fromkeys(order):
        node = man.holder_of(s, q)
        reachable = node in clients or node == identity.node_id   # a custodian is a source of its own piece
        endpoint = endpoint_of(node) if (s, q) not in failed and reachable else None
        if endpoint is not None:
            sources.append((node, endpoint))
    if len(sources) < man.k:
        raise EdgeError(f"only {len(sources)} of the {man.k} sources needed are reachable")
    moves = {}
    for r in repairs:
        signed = orders.sign(orders.Order(man.root, s, r.piece, r.new_holder, man.version,
                                          int(time.time()) + orders.LIFETIME), identity)
        try:
            fetched = await clients[r.new_holder].repair_piece(man.root, s, r.piece, orders.serialize(signed),
                                                               sources, raw, man.segments[s].roots[r.piece],
                                                               identity.node_id)
        except (TransportError, PieceAnswerError) as exc:   # the others of the segment go on; retried next pass
            log.warning("new holder %s did not rebuild piece %d of segment %d: %s", r.new_holder, r.piece, s, exc)
            continue
        stats["bytes_fetched"] += fetched
        moves[(s, r.piece)] = r.new_holder
        if upload > 0:   # paced by the upload limit: the k pieces the new holder fetched
            await trio.sleep(man.k * size / upload)
    return moves


def attach(protector, config) -> Repairs:
    """The agent's wiring: protector's audits feed a Repairs with the node's repair_after and upload limit."""
    protector.repairs = Repairs(protector, repair_after=config.repair_after, upload=config.upload_limit)
    return protector.repairs


async def serve_moves(start, protector, transport) -> None:
    """The agent's wiring once the transport runs: Moved from leaving holders reaches the repairs service."""
    transport.server.moved = protector.repairs.moved
    await start("repairs", protector.repairs.serve)
