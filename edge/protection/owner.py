"""The owner's side of protected pins (issue 16): `hearth pin add CID --protect auto|K+M` run by the agent.

The owner asks every neighbour it knows for a Welcome; those that list "pieces" are eligible (N of them; the
owner never holds its own pieces). k+m comes from N (edge/protect/manifest.py). The DAG is cut into segments
(edge/protect/segments.py), each laid out and encoded into n = k+m pieces with a Merkle root each, on a worker
thread; each segment's pieces go at once to n distinct neighbours chosen by edge/protect/placement.py. A holder
that refuses (FULL, or any failure) is replaced by another eligible node not holding a piece of that segment,
and is not asked again for this pin. Then the manifest is signed, handed to every holder (readers ask them for
it) and kept here, in data_dir/protect/<root CID>.manifest, written atomically.

Each lease runs LEASE_MAX (30 days); serve_renewals renews every kept manifest's pieces daily and audits every
piece every 6 hours (and `hearth pin ls` audits them at once).
"""

import contextlib
import logging
from dataclasses import replace
import os
import random
import time

import trio

from edge.atomic import open_dir, read_regular, write_atomic
from edge.errors import DecodeError, EdgeError
from edge.ipld.cid import CID
from edge.protect import manifest as manifests
from edge.identity import public_key_of
from edge.protect import audit, merkle, segments
from edge.protect.placement import Candidate, PlacementError, choose, domains
from edge.protection.siblings import sibling_reads
from edge.service import Handle
from edge.store.pieces import LEASE_MAX
from edge.transport.client import PeerRefused, TransportError, open_client
from edge.transport.piececlient import PieceAnswerError
from edge.wire.messages import MAX_MANIFEST as WIRE_MANIFEST

log = logging.getLogger(__name__)
DIR = "protect"
RENEW_EVERY = 86400.0     # seconds between lease renewals (a lease runs 30 days)
AUDIT_EVERY = 6 * 3600.0  # seconds between audits of every piece (each reads at most 64 KiB at its holder)
WATCH_EVERY = 600.0       # seconds between looks at the peer table for holders away past repair_after
HELLO_TIMEOUT = 5.0
PROOFS_EACH = 16          # proofs of one holder between asks of their siblings: well within the holders' 5 s memory
AUDIT_TRIES = 3           # a holder that stalls is asked this many times before its unanswered pieces fail
PUSH_TIMEOUT = 60.0       # seconds one chunk of a piece may take to be acknowledged
UNKNOWN_FREE = 1 << 40    # a neighbour that does not say its free disk: placement treats it as roomy


class ProtectFailed(EdgeError):
    """The pin could not be protected; the message says why and what to do."""


def manifest_path(data_dir: str, root: CID) -> str:
    return os.path.join(data_dir, DIR, f"{root}.manifest")


def kept_manifests(data_dir: str) -> list[manifests.Manifest]:
    """The manifests of this node's protected pins (blocking: reads files); a damaged one is skipped, logged."""
    folder = os.path.join(data_dir, DIR)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    fd = open_dir(folder)
    out = []
    try:
        for name in names:
            if not name.endswith(".manifest"):
                continue
            try:
                out.append(manifests.parse(read_regular(name, fd, manifests.MAX_MANIFEST) or b""))
            except (DecodeError, EdgeError) as exc:
                log.error("%s/%s is not a valid manifest (%s); protect the pin again", folder, name, exc)
    finally:
        os.close(fd)
    return out


class Protector:
    """Protects pins of this node: store (AsyncStore), identity, peers (PeerTable), cert (fleet), data_dir."""

    def __init__(self, store, identity, peers, data_dir: str, cert: bytes | None = None, rng=None):
        self.store, self.identity, self.peers, self.cert = store, identity, peers, cert
        self.data_dir = data_dir
        self.rng = rng or random.SystemRandom()
        self._chains: dict[str, bytes] = {}   # holder -> the beacon secret committed to for its next audit
        self._epoch: dict[str, tuple] = {}    # holder -> (secret, commitment, beacon) of its audit this round
        self._auditing = trio.Lock()
        self._proven: list = []   # (holder, segment, piece, challenged blocks, asked, answered) of this round's proofs
        self.audited: dict[str, dict] = {}    # root CID -> its last health() result
        self.repairs = None                   # edge/protection/repair.py's Repairs, fed every audit's results

    async def protect(self, root: CID, spec: str) -> dict:
        """Protect the pin root (every block of it must be here) by spec ("auto" or "K+M"); a summary. When it
        fails half-way, the pieces already handed out are released again (best effort: a holder that does not
        hear it frees them when their lease ends)."""
        if await trio.to_thread.run_sync(os.path.exists, manifest_path(self.data_dir, root)):
            raise ProtectFailed(f"{root} is protected already (`hearth pin ls` shows how); `hearth pin rm {root}` "
                                "first to protect it differently")
        t0 = time.monotonic()
        placed: list[tuple[str, bytes]] = []   # (holder, piece root) of every piece handed out, or begun
        async with contextlib.AsyncExitStack() as stack:
            clients = await self._eligible(stack)
            candidates = self._candidates(clients)
            # N counts operators, not node ids: one operator's nodes take at most one piece of a segment
            k, m = manifests.parse_protect(spec, domains(candidates.values()))
            if m < 1:
                raise ProtectFailed(f"--protect {k}+{m} keeps no spare piece; use at least one parity piece "
                                    f"({k}+1 or more) or auto")
            try:
                man, raw, sent = await self._spread(clients, candidates, root, k, m, placed)
            except BaseException:
                with trio.CancelScope(shield=True), trio.move_on_after(HELLO_TIMEOUT * 2):
                    await self._take_back(clients, placed)
                raise
        await trio.to_thread.run_sync(self._keep, root, raw)
        await self.store.pin(root)
        return {"cid": str(root), "k": k, "m": m, "segments": len(man.segments), "pieces": len(man.segments) * man.n,
                "holders": list(man.holders), "bytes_sent": sent, "eligible": len(clients),
                "seconds": round(time.monotonic() - t0, 3)}

    def _candidates(self, clients) -> dict:
        candidates = {node: _candidate(self.peers.peers.get(node), c) for node, c in clients.items()}
        if self.repairs is not None:   # the audit record of each node so far weighs in its score
            candidates = {node: replace(c, reputation=self.repairs.reputation_of(node))
                          for node, c in candidates.items()}
        return candidates

    async def _spread(self, clients, candidates, root: CID, k: int, m: int, placed: list):
        """Every segment's pieces on their holders, then the manifest signed and handed to each: (manifest, its
        bytes, piece bytes sent)."""
        lease = int(time.time() + LEASE_MAX)
        refused: set[str] = set()
        entries, sent, index = [], 0, 0
        prepared = segments.prepare(self.store.sync.get, root, k, m)   # cut, lay out, encode, hash: in a thread
        while True:
            ready = await self.store.run(next, prepared, None)
            if ready is None:
                break
            pieces, roots = ready.pieces, ready.roots
            holders = await self._place(clients, candidates, refused, root, index, pieces, roots, lease, placed)
            sent += sum(len(p) for p in pieces)
            entries.append((ready.length, [cid for cid, _ in ready.segment.blocks], roots, holders))
            index += 1
        man = manifests.sign(manifests.make(root, k, m, entries, self.identity.node_id, int(time.time())),
                             self.identity)
        raw = manifests.serialize(man)
        if len(raw) > WIRE_MANIFEST:
            raise ProtectFailed(f"the manifest of {root} is {len(raw)} bytes, over the {WIRE_MANIFEST}-byte limit a "
                                "message carries; protect a smaller pin")
        async with trio.open_nursery() as nursery:
            for node in man.holders:
                nursery.start_soon(clients[node].put_manifest, root, raw)
        return man, raw, sent

    async def _take_back(self, clients, placed) -> None:
        by_holder: dict[str, list[bytes]] = {}
        for node, r in placed:
            by_holder.setdefault(node, []).append(r)
        for node, roots in by_holder.items():
            try:
                await clients[node].release_pieces(roots)
            except (TransportError, EdgeError) as exc:
                log.info("could not take back the pieces at %s (their lease ends them): %s", node, exc)

    async def _eligible(self, stack) -> dict:
        return await eligible(self.identity, self.peers, self.cert, stack)

    async def _place(self, clients, candidates, refused, root, index, pieces, roots, lease, placed) -> list[str]:
        """Each piece of segment index on its own holder: chosen, pushed, and replaced while refused."""
        size = len(pieces[0])
        holders: list[str | None] = [None] * len(pieces)
        try:
            chosen = choose([c for node, c in candidates.items() if node not in refused], len(pieces), size,
                            self.rng)
        except PlacementError as exc:
            raise ProtectFailed(f"segment {index}: {exc}") from None

        async def push(i: int, node: str):
            while True:
                try:
                    placed.append((node, roots[i]))   # before: a push cut short may still have been kept
                    await clients[node].store_piece(root, index, i, pieces[i], lease, root=roots[i])
                    holders[i] = node
                    c = candidates[node]
                    candidates[node] = Candidate(c.node, c.operator, c.share, max(0, c.free - size), c.uptime,
                                                 c.rtt, c.reputation)
                    return
                except (TransportError, PieceAnswerError) as exc:
                    log.info("neighbour %s did not take piece %d of segment %d: %s", node, i, index, exc)
                    refused.add(node)
                taken = {h for h in holders if h} | set(chosen)
                pool = [c for n_, c in candidates.items() if n_ not in refused and n_ not in taken]
                held = {candidates[t].domain for t in taken - refused if t in candidates}   # their operators too
                try:
                    node = choose(pool, 1, size, self.rng, exclude_domains=held)[0]
                except PlacementError:
                    raise ProtectFailed(f"segment {index}: no neighbour left to take piece {i} (those asked "
                                        f"refused: {len(refused)}); free some share or add neighbours") from None
                chosen.append(node)
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(chosen):
                nursery.start_soon(push, i, node)
        return holders

    def _keep(self, root: CID, raw: bytes) -> None:
        folder = os.path.join(self.data_dir, DIR)
        os.makedirs(folder, 0o700, exist_ok=True)
        write_atomic(manifest_path(self.data_dir, root), raw, 0o600)

    async def renew(self) -> int:
        """Renew the leases of every piece of every kept manifest; pieces renewed."""
        lease = int(time.time() + LEASE_MAX)
        renewed = 0
        for man in await trio.to_thread.run_sync(kept_manifests, self.data_dir):
            renewed += await self._each_holder(man, lambda client, roots: client.renew_leases(roots, lease))
        return renewed

    async def health(self) -> list[dict]:
        """Audit every piece of every protected pin once (edge/protect/audit.py: 4 leaves each, at most 4 x 16
        KiB read by the holder): per pin, its k+m, the pieces, the healthy ones (a proof that checks), and per
        holder what it proved. A holder away or refusing counts its pieces unhealthy."""
        async with self._auditing:   # one run at a time: each holder's beacon chain advances in order
            return await self._health()

    async def _health(self) -> list[dict]:
        out = []
        for man in await trio.to_thread.run_sync(kept_manifests, self.data_dir):
            by_holder: dict[str, list[tuple[int, int, bytes]]] = {}
            for s, seg in enumerate(man.segments):
                for p, r in enumerate(seg.roots):
                    by_holder.setdefault(man.holder_of(s, p), []).append((s, p, r))
            results = {}
            self._proven = []
            for node, items in by_holder.items():
                await self._audit_in_parts(man, node, items, results)
            healthy = sum(r["passed"] for r in results.values())
            out.append({"cid": str(man.root), "k": man.k, "m": man.m, "pieces": len(man.segments) * man.n,
                        "healthy": healthy, "holders": results, "audited": int(time.time())})
            self.audited[str(man.root)] = out[-1]
        if self.repairs is not None:
            self.repairs.record(out)
        return out

    async def summary(self) -> list[dict]:
        """Each protected pin of this node as `hearth status` shows it: k+m, pieces, holders and the last audit
        (healthy pieces then, and when; None before the first)."""
        out = []
        for man in await trio.to_thread.run_sync(kept_manifests, self.data_dir):
            last = self.audited.get(str(man.root))
            out.append({"cid": str(man.root), "k": man.k, "m": man.m, "pieces": len(man.segments) * man.n,
                        "holders": len(man.holders), "healthy": last["healthy"] if last else None,
                        "audited": last["audited"] if last else None})
        return out

    async def _audit_in_parts(self, man, node: str, items, results: dict) -> None:
        """Audit node's pieces of man PROOFS_EACH at a time, asking their siblings after each part who read the
        challenged blocks (siblings.py), while the siblings still remember the reads (edge/transport/pieces.py
        HORIZON); results[node] sums the parts. A holder that stops answering in a part is not asked again this
        round: the pieces left count as in _audit_holder."""
        for start in range(0, len(items), PROOFS_EACH):
            first = len(self._proven)
            part = await self._audit_holder(man, node, items[start:start + PROOFS_EACH])
            r = results.setdefault(node, part)
            if r is not part:
                for key in ("pieces", "passed", "failed", "rechecked"):
                    r[key] += part[key]
                r["bad"] += part["bad"]
                r["why"] = part["why"] or r["why"]
            await sibling_reads(self, man, results, self._proven[first:])
            if not part["reached"]:
                r["pieces"] += len(items[start + PROOFS_EACH:])   # the parts it was not asked for
                if r is not part:   # it answered an earlier part, then stalled: what it did not prove fails
                    unproven = items[start:]
                    r["failed"] += len(unproven)
                    r["bad"] += [(s, p) for s, p, _ in unproven]
                return

    async def _audit_holder(self, man, node: str, items) -> dict:
        """Audit node's pieces of man, in one epoch of this auditor's beacon chain with node. A holder that stalls
        (its connection times out) is asked again, up to AUDIT_TRIES times in all, for the pieces not yet
        answered; then those count as failed. "bad" lists the (segment, piece) pairs whose proof failed,
        "reached" whether the holder answered at all (repair.py tracks who is away from it)."""
        result = {"pieces": len(items), "passed": 0, "failed": 0, "why": "", "bad": [], "reached": False,
                  "rechecked": 0}
        peer = self.peers.peers.get(node)
        if peer is None:
            result["why"] = "not a neighbour now"
            return result
        secret = self._chains.get(node) or audit.new_secret()
        following = audit.new_secret()
        self._chains[node] = following
        commit = audit.commitment(following)
        beacon = audit.open_beacon(secret, audit.commitment(secret))
        self._epoch[node] = (secret, commit, beacon)
        todo = list(items)
        for _ in range(AUDIT_TRIES):
            try:
                async with open_client(self.identity, peer.endpoint(), node, cert=self.cert,
                                       timeout=HELLO_TIMEOUT) as client:
                    result["reached"] = True
                    while todo:
                        s, p, root = todo[0]
                        passed, why = await self._prove(client, man, node, s, root, secret, commit, beacon)
                        todo.pop(0)
                        result["passed" if passed else "failed"] += 1
                        if not passed:
                            result["why"] = why
                            result["bad"].append((s, p))
                return result
            except TransportError as exc:
                result["why"] = str(exc)
        if result["reached"]:   # it answered, then stalled past its retries: what it did not prove fails
            result["failed"] += len(todo)
            result["bad"] += [(s, p) for s, p, _ in todo]
        return result

    async def reprove(self, man, node: str, s: int, p: int) -> tuple[bool, str, tuple | None]:
        """Audit piece p of segment s at node again at once, in this round's epoch with a fresh nonce (so fresh
        challenged leaves): (passed, why, its entry as in _proven). Asked by siblings.py of a suspect proof."""
        peer, epoch = self.peers.peers.get(node), self._epoch.get(node)
        if peer is None or epoch is None:
            return False, "not a neighbour now: a suspect proof could not be audited again", None
        try:
            async with open_client(self.identity, peer.endpoint(), node, cert=self.cert,
                                   timeout=HELLO_TIMEOUT) as client:
                passed, why = await self._prove(client, man, node, s, man.segments[s].roots[p], *epoch)
        except TransportError as exc:
            return False, f"a suspect proof could not be audited again: {exc}", None
        return passed, why, self._proven[-1] if passed else None

    async def _prove(self, client, man, node, s, root, secret, commit, beacon) -> tuple[bool, str]:
        nonce = audit.new_nonce()
        size = man.piece_size(s)
        asked = time.monotonic()
        try:
            proof = await client.audit(root, nonce, secret, commit)
        except (PeerRefused, PieceAnswerError) as exc:
            return False, str(exc)
        answered = time.monotonic()
        indices = audit.challenge(beacon, self.identity.public_key, root, nonce, merkle.leaf_count(size))
        verdict = audit.check(root, size, indices, proof, public_key_of(node), nonce=nonce)
        if verdict:   # its siblings are asked after the round whether anyone read these blocks meanwhile
            self._proven.append((node, s, man.segments[s].roots.index(root),
                                 sorted({i * merkle.LEAF // merkle.SUBTREE for i in indices}), asked, answered))
        return bool(verdict), "" if verdict else verdict.reason

    async def release(self, root: CID) -> dict:
        """End the protection of root (`hearth pin rm`): every holder told to free its pieces, the manifest
        removed here. A holder away now frees them when their lease runs out."""
        path = manifest_path(self.data_dir, root)
        man = next((m for m in await trio.to_thread.run_sync(kept_manifests, self.data_dir) if m.root == root), None)
        if man is None:
            return {"cid": str(root), "released": 0}
        released = await self._each_holder(man, lambda client, roots: client.release_pieces(roots))
        await trio.to_thread.run_sync(os.unlink, path)
        return {"cid": str(root), "released": released, "pieces": len(man.segments) * man.n}

    async def _each_holder(self, man, ask) -> int:
        """await ask(client, roots of its pieces) at each holder of man that is a neighbour now; how many roots
        the holders said they had."""
        by_holder: dict[str, list[bytes]] = {}
        for s, seg in enumerate(man.segments):
            for p, r in enumerate(seg.roots):
                by_holder.setdefault(man.holder_of(s, p), []).append(r)
        done = 0
        for node, roots in by_holder.items():
            peer = self.peers.peers.get(node)
            if peer is None:
                continue   # away now: renewal tries again tomorrow; an unrenewed lease ends by itself
            try:
                async with open_client(self.identity, peer.endpoint(), node, cert=self.cert,
                                       timeout=HELLO_TIMEOUT) as client:
                    done += sum(await ask(client, roots))
            except (TransportError, EdgeError) as exc:
                log.info("lease request to %s failed: %s", node, exc)
        return done


async def serve_renewals(protector: Protector, every: float = RENEW_EVERY, audit_every: float = AUDIT_EVERY,
                         watch_every: float = WATCH_EVERY, *, task_status=trio.TASK_STATUS_IGNORED):
    """The upkeep of this node's protected pins: audit every piece every `audit_every` seconds and renew the
    leases every `every` seconds (each the first time after its interval); failed audits are logged. Every
    `watch_every` seconds between audits, holders the peer table no longer lists count as away and those away
    past repair_after are repaired (repair.py Repairs.watch), not only after the next audit."""
    state = {"renewed": 0, "audits": 0, "failed": 0, "repaired": 0}
    task_status.started(Handle("renewals", lambda: dict(state)))
    next_renew, next_audit = trio.current_time() + every, trio.current_time() + audit_every
    next_watch = trio.current_time() + watch_every
    while True:
        await trio.sleep_until(min(next_renew, next_audit, next_watch))
        try:   # a round that fails (a bug, a disk error) is logged; the next one runs as planned
            if trio.current_time() >= next_watch:
                next_watch += watch_every
                if protector.repairs is not None and trio.current_time() < next_audit:
                    state["repaired"] += await protector.repairs.watch()
            if trio.current_time() >= next_audit:
                next_audit += audit_every
                pins = await protector.health()
                if protector.repairs is not None:   # pieces unhealthy long enough are rebuilt elsewhere
                    state["repaired"] += await protector.repairs.run()
                for pin in pins:
                    state["audits"] += 1
                    for node, r in pin["holders"].items():
                        if r["failed"] or r["passed"] < r["pieces"]:
                            state["failed"] += 1
                            log.warning("protected %s: %s proved %d of its %d pieces (%s)", pin["cid"], node,
                                        r["passed"], r["pieces"], r["why"] or "no answer")
            if trio.current_time() >= next_renew:
                next_renew += every
                state["renewed"] += await protector.renew()
        except Exception:   # noqa: BLE001 - the upkeep is one service among the agent's: it fails alone
            log.exception("the upkeep of protected pins failed this round")


async def eligible(identity, peers, cert, stack) -> dict:
    """Clients (greeted, kept open in stack) of the known neighbours whose Welcome lists "pieces": all are asked
    at once, then those that list it are connected again for the pushes (the owner's, a repair's, a leave's)."""
    listed = []

    async def ask(peer):
        try:
            async with open_client(identity, peer.endpoint(), peer.node, cert=cert, timeout=HELLO_TIMEOUT) as client:
                if "pieces" in client.welcome.caps:
                    listed.append(peer)
        except (TransportError, EdgeError, OSError) as exc:
            log.info("neighbour %s cannot hold pieces now: %s", peer.node, exc)
    async with trio.open_nursery() as nursery:
        for peer in list(peers.peers.values()):
            if peer.rejected is None and peer.node != identity.node_id:
                nursery.start_soon(ask, peer)
    clients = {}
    for peer in listed:
        try:
            clients[peer.node] = await stack.enter_async_context(open_client(
                identity, peer.endpoint(), peer.node, cert=cert, timeout=PUSH_TIMEOUT))
        except (TransportError, EdgeError, OSError) as exc:
            log.info("neighbour %s cannot hold pieces now: %s", peer.node, exc)
    return clients


def _candidate(peer, client) -> Candidate:
    free = client.welcome.free if client.welcome.free is not None else UNKNOWN_FREE
    uptime = 1.0 if peer is None or not peer.probes else max(0.0, 1 - peer.failures / peer.probes)
    rtt = (peer.rtt or 0.0) if peer is not None else 0.0
    return Candidate(client.server_node, client.welcome.operator, share=max(free, 1), free=free,
                     uptime=max(uptime, 0.01), rtt=rtt)
