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

Who computes the rebuilt piece: this node, the repairer. It fetches k healthy pieces of the segment once (each
checked against its Merkle root), computes only the missing pieces (edge/store/stripe.py rebuild_piece, checked
against their roots in the manifest: a rebuilt piece is byte-identical to the lost one) and pushes each to its
new holder with StorePiece. A segment's repair thus moves k × the piece size in and one piece out per lost piece;
having the new holder fetch the k pieces itself would save the one piece out but needs a request asking a holder
to repair, which the wire does not have yet. The pushes are paced by this node's upload limit. Then the next
version of the manifest (only holders changed) is signed, kept, and handed to every holder; the old holder of a
moved piece is told to release it (best effort: its lease ends it otherwise).
"""

import contextlib
import logging
import time

import trio

from edge.errors import EdgeError
from edge.protect import manifest as manifests
from edge.protect import merkle
from edge.protect import repair as planning
from edge.protect.placement import Candidate
from edge.protect.reputation import Reputation
from edge.protection.owner import _candidate, kept_manifests
from edge.store.pieces import LEASE_MAX
from edge.store.stripe import rebuild_piece
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
        return await repair_segment(man, s, repairs, clients, failed, self.stats, self.upload)

    def _candidate(self, node: str, client) -> Candidate:
        c = _candidate(self.protector.peers.peers.get(node), client)
        return Candidate(c.node, c.operator, c.share, c.free, c.uptime, c.rtt, self.reputation_of(node))


async def repair_segment(man, s: int, repairs, clients, failed, stats: dict, upload: int = 0, local=None) -> dict:
    """k verified pieces of segment s fetched once (local(piece number) -> its bytes or None: a piece this node
    holds itself, read here), each lost piece rebuilt, checked against its root and pushed to its new holder with
    StorePiece (the pusher's lease), paced by upload (bytes per second; 0: no limit): {(s, piece): new holder}."""
    seg, size = man.segments[s], man.piece_size(s)
    got: dict[int, bytes] = {}
    lost = {r.piece for r in repairs}
    order = [q for q, _ in repairs[0].sources] + [q for q in range(man.n) if q not in lost]
    for q in dict.fromkeys(order):
        node = man.holder_of(s, q)
        if len(got) >= man.k or (s, q) in failed:
            continue
        mine = await local(q) if local is not None else None
        if mine is not None:
            got[q] = mine
            continue
        if node not in clients:
            continue
        try:
            got[q] = await clients[node].get_piece(seg.roots[q], size)
            stats["bytes_fetched"] += size
        except (TransportError, PieceAnswerError) as exc:
            log.info("repair source %s gave no piece %d of segment %d: %s", node, q, s, exc)
    if len(got) < man.k:
        raise EdgeError(f"only {len(got)} of the {man.k} pieces needed could be fetched")
    moves = {}
    lease = int(time.time() + LEASE_MAX)   # the holder's wall clock, not the health clock
    for r in repairs:
        piece = await trio.to_thread.run_sync(rebuild_piece, got, man.k, man.m, seg.length, r.piece)
        if merkle.build(piece).root != seg.roots[r.piece]:
            raise EdgeError(f"piece {r.piece} of segment {s} rebuilt does not match its root")
        await clients[r.new_holder].store_piece(man.root, s, r.piece, piece, lease, root=seg.roots[r.piece])
        stats["bytes_pushed"] += size
        moves[(s, r.piece)] = r.new_holder
        if upload > 0:   # paced by the upload limit: a repair never takes more than this node lends
            await trio.sleep(size / upload)
    return moves


def attach(protector, config) -> Repairs:
    """The agent's wiring: protector's audits feed a Repairs with the node's repair_after and upload limit."""
    protector.repairs = Repairs(protector, repair_after=config.repair_after, upload=config.upload_limit)
    return protector.repairs


async def serve_moves(start, protector, transport) -> None:
    """The agent's wiring once the transport runs: Moved from leaving holders reaches the repairs service."""
    transport.server.moved = protector.repairs.moved
    await start("repairs", protector.repairs.serve)
