"""A year of a protected pin in a churning neighbourhood, time-compressed in one process: the real placement,
repair planning, audits, manifests and erasure code (edge/protect/), a simulated clock and a simulated network
that counts bytes and serves only from nodes that are online.

30 nodes, each alternating online and offline (exponential, mean 9 h on and 1 h off: 90% uptime); every day one
node is lost for good (a random one; it simply never returns) and a new one joins. Nodes come in operators: every
fifth node shares an operator with the next. The owner repairs and audits; on day 180 it leaves for good and the
deterministic repairer (repair.repairer) takes over, signing the manifest updates. On day 100 one holder turns
cheater: it deletes its pieces but stays online and answers audits from garbage. Each day every online holder is
audited on one random piece (a failed audit audits all of that holder's pieces), and a repair pass runs; one also
runs whenever a node has been offline for repair_after, and when a node comes back while a repair waits.

The model of repair traffic (every new piece is fetched as k pieces of its size):
    repair bytes ≈ k × piece size × (L + q × O)
L: pieces lost for good (held by a lost node or the cheater when it was lost or caught);
O: pieces whose holder was offline past repair_after (those episodes' pieces, counted at repair_after);
q: the share of those that get repaired before their holder returns. A segment is repaired when a second piece is
unhealthy (health < 0.75 at 8+6); it spends the fraction π₁ = λL / (2λL + λO) of its time with one lost piece
pending (λL, λO: the per-segment rates of lost pieces and of long offline episodes), and during an episode
(a further mean_off by memorylessness) another unhealthy piece arrives with probability ≈ (λL + λO) × mean_off;
so q = π₁ + (1 − π₁)(λL + λO)·mean_off.

Run: REQUIRE_NATIVE=1 python benchmarks/protect_sim.py [--days 365] [--seed 1]
"""

import argparse
import heapq
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.identity import Identity  # noqa: E402
from edge.ipld.cid import CID  # noqa: E402
from edge.protect import audit, manifest, merkle, placement, repair, segments  # noqa: E402
from edge.protect.placement import Candidate  # noqa: E402
from edge.protect.reputation import Reputation  # noqa: E402
from edge.store.stripe import rebuild_piece  # noqa: E402

HOUR, DAY = 3600.0, 86400.0


@dataclass
class Node:
    identity: Identity
    operator: str
    joined: float
    rtt: float
    online: bool = True
    last_seen: float = 0.0
    episode: int = 0                      # counts offline periods, so a stale check can tell
    online_time: float = 0.0
    since: float = 0.0                    # when the current on/off state began
    lost: bool = False
    cheater: bool = False
    pieces: dict = field(default_factory=dict)     # (segment, piece) -> (bytes, subtree roots)
    reputation: Reputation = field(default_factory=Reputation)

    id: str = ""

    def __post_init__(self):
        self.id = self.identity.node_id


@dataclass
class Result:
    days: int
    segments: int
    k: int
    m: int
    piece_size: int
    lost_segments: int
    min_health: float
    repairs: int
    repair_bytes: int
    model_bytes: float
    lost_pieces: int
    offline_pieces: int
    q: float
    audits: int
    audits_failed: int
    repairer_after_owner: str
    operator_violations: int
    seconds: float


class Sim:
    def __init__(self, *, nodes=30, segments_n=60, seg_bytes=128 << 10, days=365, seed=1, mean_on=9 * HOUR,
                 mean_off=1 * HOUR, repair_after=repair.REPAIR_AFTER, share=4 << 20):
        self.rng = random.Random(seed)
        self.days, self.mean_on, self.mean_off, self.repair_after = days, mean_on, mean_off, repair_after
        self.share = share
        self.now = 0.0
        self.events = []
        self.seq = 0
        self.nodes: dict[str, Node] = {}
        self.serial = 0
        for _ in range(nodes):
            self._join()
        self.owner = Identity.from_seed(self.rng.randbytes(32))
        self.owner_here = True
        self.k, self.m = manifest.defaults(nodes)
        self._pin(segments_n, seg_bytes)
        self.failed = set()
        self.waiting = False
        self.stats = dict(repairs=0, repair_bytes=0, lost_pieces=0, offline_pieces=0, audits=0, audits_failed=0,
                          lost_segments=0, operator_violations=0)
        self.min_health = 1.0
        self.repairer_after_owner = ""

    # the neighbourhood ----------------------------------------------------------------------------------------

    def _join(self):
        self.serial += 1
        ident = Identity.from_seed(self.rng.randbytes(32))
        operator = f"op{self.serial - 1}" if self.serial % 5 == 1 and self.serial > 1 else f"op{self.serial}"
        node = Node(ident, operator, self.now, self.rng.uniform(0.002, 0.040), last_seen=self.now, since=self.now)
        self.nodes[node.id] = node
        self._at(self.now + self.rng.expovariate(1 / self.mean_on), "off", node.id)

    def _at(self, t, kind, arg=None):
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, arg))

    def _set_online(self, node: Node, online: bool):
        if node.online:
            node.online_time += self.now - node.since
        node.online, node.since = online, self.now
        node.last_seen = self.now

    def alive(self):
        return [n for n in self.nodes.values() if not n.lost]

    def states(self):
        out = {n.id: repair.NodeState(n.online, self.now if n.online else n.last_seen, n.reputation.disqualified)
               for n in self.nodes.values()}
        out[self.owner.node_id] = repair.NodeState(self.owner_here, self.now if self.owner_here else self.owner_left)
        return out

    def candidates(self):
        out = []
        for n in self.alive():
            if not n.online:
                continue
            held = sum(len(p) for p, _ in n.pieces.values())
            age = max(HOUR, self.now - n.joined)
            uptime = (n.online_time + (self.now - n.since)) / age
            out.append(Candidate(n.id, n.operator, self.share, self.share - held, min(1.0, uptime), n.rtt,
                                 n.reputation))
        return out

    # the pin --------------------------------------------------------------------------------------------------

    def _pin(self, count, seg_bytes):
        self.segments, raws = [], []
        for _ in range(count):
            blocks = tuple((CID.for_block(b), b) for b in (self.rng.randbytes(seg_bytes // 4) for _ in range(4)))
            seg = segments.Segment(blocks)
            raws.append(segments.layout(seg))
            self.segments.append(seg)
        self.lengths = [len(r) for r in raws]
        pieces = [segments.encode(r, self.k, self.m) for r in raws]
        self.piece_sizes = [len(p[0]) for p in pieces]
        self.trees = [[merkle.build(p) for p in ps] for ps in pieces]
        holders = placement.place_pin(self.candidates(), self.piece_sizes, self.k + self.m, self.rng)
        for s, seg_holders in enumerate(holders):
            for p, node in enumerate(seg_holders):
                self.nodes[node].pieces[(s, p)] = (bytes(pieces[s][p]), self.trees[s][p].subtree_roots)
        man = manifest.make(CID.for_block(b"sim root"), self.k, self.m,
                            [(self.lengths[s], [c for c, _ in self.segments[s].blocks],
                              [t.root for t in self.trees[s]], holders[s]) for s in range(count)],
                            self.owner.node_id, created=0)
        self.manifest = manifest.parse(manifest.serialize(manifest.sign(man, self.owner)))
        self._holders = (None, [], {})

    def holders(self):
        if self._holders[0] is not self.manifest:
            rows = [[self.manifest.holder_of(s, p) for p in range(self.manifest.n)]
                    for s in range(len(self.manifest.segments))]
            named = {}
            for s, seg in enumerate(rows):
                for p, h in enumerate(seg):
                    named.setdefault(h, set()).add((s, p))
            self._holders = (self.manifest, rows, named)
        return self._holders[1]

    def named(self, node_id) -> set:
        """The (segment, piece) pairs the manifest gives node_id."""
        self.holders()
        return self._holders[2].get(node_id, set())

    def held_pieces(self, node_id):
        return len(self.named(node_id))

    # events ---------------------------------------------------------------------------------------------------

    def run(self) -> Result:
        t0 = time.process_time()
        for d in range(1, self.days + 1):
            self._at(d * DAY, "day", d)
        end = self.days * DAY + 1
        while self.events and self.events[0][0] <= end:
            self.now, _, kind, arg = heapq.heappop(self.events)
            getattr(self, "_on_" + kind)(arg)
        return self._result(time.process_time() - t0)

    def _on_off(self, node_id):
        node = self.nodes[node_id]
        if node.lost:
            return
        self._set_online(node, False)
        node.episode += 1
        self._at(self.now + self.rng.expovariate(1 / self.mean_off), "on", node_id)
        self._at(self.now + self.repair_after + 1, "long", (node_id, node.episode))

    def _on_on(self, node_id):
        node = self.nodes[node_id]
        if node.lost:
            return
        self._set_online(node, True)
        # pieces the manifest no longer names (repaired elsewhere while it was away) are dropped: their lease ends
        names = self.named(node_id)
        if any(key not in names for key in node.pieces):
            node.pieces = {key: v for key, v in node.pieces.items() if key in names}
        self._at(self.now + self.rng.expovariate(1 / self.mean_on), "off", node_id)
        if self.waiting:
            self.repair_pass()

    def _on_long(self, arg):
        node_id, episode = arg
        node = self.nodes[node_id]
        if node.online or node.episode != episode:
            return
        if not node.lost and not node.cheater:
            self.stats["offline_pieces"] += self.held_pieces(node_id)
        self.repair_pass()

    def _on_day(self, d):
        if d == 180:
            self.owner_here, self.owner_left = False, self.now
        if d == 100:
            self._turn_cheater()
        victim = self.rng.choice(self.alive())
        if not (victim.cheater and victim.reputation.failed):   # a caught cheater's pieces were counted then
            self.stats["lost_pieces"] += self.held_pieces(victim.id)
        if victim.online:
            self._set_online(victim, False)
            victim.episode += 1
            self._at(self.now + self.repair_after + 1, "long", (victim.id, victim.episode))
        victim.lost, victim.pieces = True, {}
        self._join()
        self.audit_round()
        self.repair_pass()

    def _turn_cheater(self):
        holders = [n for n in self.alive() if n.pieces and n.online]
        cheat = self.rng.choice(holders)
        cheat.cheater = True
        # it keeps the piece sizes and a tree of zeros, so its proofs are well-formed and signed but wrong
        cheat.pieces = {key: (bytes(len(data)), merkle.build(bytes(len(data))).subtree_roots)
                        for key, (data, _) in cheat.pieces.items()}

    # audits and repair ------------------------------------------------------------------------------------------

    def auditor(self) -> Identity | None:
        who = repair.repairer(bytes(self.manifest.root), self.owner.node_id, self.holders(), self.states(), self.now,
                              self.repair_after)
        if who == self.owner.node_id:
            return self.owner
        if who is not None and not self.owner_here and not self.repairer_after_owner:
            self.repairer_after_owner = who
        return None if who is None else self.nodes[who].identity

    def _audit(self, auditor: Identity, node: Node, key) -> bool:
        s, p = key
        data, cached = node.pieces[key]
        secret = self.rng.randbytes(32)
        committed = audit.commitment(secret)            # published an epoch ahead in the real protocol
        beacon = audit.open_beacon(secret, committed)
        nonce = self.rng.randbytes(16)
        root, size = self.manifest.segments[s].roots[p], self.piece_sizes[s]
        indices = audit.challenge(beacon, auditor.public_key, root, nonce, merkle.leaf_count(size))
        read = lambda b: data[b * merkle.SUBTREE:(b + 1) * merkle.SUBTREE]
        proof = audit.answer(node.identity, read, cached, size, root, nonce, indices)
        ok = bool(audit.check(root, size, indices, audit.parse_proof(audit.serialize_proof(proof)),
                              node.identity.public_key, nonce=nonce))
        node.reputation = node.reputation.record(ok)
        self.stats["audits"] += 1
        if not ok:
            self.stats["audits_failed"] += 1
            self.failed.add(key)
        return ok

    def audit_round(self):
        auditor = self.auditor()
        if auditor is None:
            return
        self.holders()
        for node_id, keys in sorted(self._holders[2].items()):
            node = self.nodes.get(node_id)
            if node is None or node.lost or not node.online:
                continue
            keys = sorted(k for k in keys if k not in self.failed)
            if keys and not self._audit(auditor, node, self.rng.choice(keys)):
                self.stats["lost_pieces"] += len(keys)          # caught: all it held counts as lost
                for key in keys:                                # a failure audits everything it holds
                    self._audit(auditor, node, key)

    def repair_pass(self):
        who = self.auditor()
        if who is None:
            self.waiting = True
            return
        holders = self.holders()
        plan = repair.plan(holders, self.k, self.piece_sizes, self.states(),
                           self.candidates(), self.rng, self.now,
                           repair_after=self.repair_after, failed=self.failed, owner=self.owner.node_id,
                           operator_of=lambda n: self.nodes[n].operator if n in self.nodes else "")
        self.min_health = min(self.min_health, *plan.health)
        self.waiting = bool(plan.waiting)
        for s in range(len(holders)):       # a segment is lost when fewer than k true pieces remain anywhere
            true = sum(1 for p, h in enumerate(holders[s]) if self._holds(h, (s, p)))
            if true < self.k:
                self.stats["lost_segments"] += 1
        if not plan.repairs:
            return
        moves = {}
        for r in plan.repairs:
            fetched = {p: self._fetch(h, (r.segment, p)) for p, h in r.sources}
            piece = rebuild_piece(fetched, self.k, self.m, self.lengths[r.segment], r.piece)
            tree = merkle.build(piece)
            assert tree.root == self.manifest.segments[r.segment].roots[r.piece], "a rebuilt piece must verify"
            self.nodes[r.new_holder].pieces[(r.segment, r.piece)] = (piece, tree.subtree_roots)
            moves[(r.segment, r.piece)] = r.new_holder
            self.failed.discard((r.segment, r.piece))
            self.stats["repairs"] += 1
        new = manifest.sign(manifest.with_holders(self.manifest, moves, created=int(self.now)), who)
        new = manifest.parse(manifest.serialize(new))
        reason = manifest.check_update(self.manifest, new, repairers=[who.node_id])
        assert reason == "", reason
        self.manifest = new
        for seg in self.holders():
            domains = [self.nodes[h].operator for h in seg]
            self.stats["operator_violations"] += len(domains) - len(set(domains))

    def _holds(self, node_id, key) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and not node.lost and not node.cheater and key in node.pieces

    def _fetch(self, node_id, key) -> bytes:
        node = self.nodes[node_id]
        assert node.online and not node.lost, "the network serves only from online nodes"
        data, _ = node.pieces[key]
        self.stats["repair_bytes"] += len(data)
        return data

    # the end --------------------------------------------------------------------------------------------------

    def _result(self, seconds) -> Result:
        holders = self.holders()
        for s, seg in enumerate(holders):     # every segment still decodes from k true pieces, blocks by CID
            keep = {p: self.nodes[h].pieces[(s, p)][0] for p, h in enumerate(seg) if self._holds(h, (s, p))}
            if len(keep) < self.k:
                self.stats["lost_segments"] += 1
                continue
            chosen = dict(list(self.rng.sample(sorted(keep.items()), self.k)))
            assert segments.decode(chosen, self.k, self.m, self.lengths[s]) == self.segments[s]
        nseg, hours = len(holders), self.days * 24
        lam_l = self.stats["lost_pieces"] / nseg / hours          # per segment per hour
        lam_o = self.stats["offline_pieces"] / nseg / hours
        pi1 = lam_l / (2 * lam_l + lam_o) if lam_l else 0.0
        q = pi1 + (1 - pi1) * (lam_l + lam_o) * (self.mean_off / HOUR)
        size = sum(self.piece_sizes) / nseg
        model = self.k * size * (self.stats["lost_pieces"] + q * self.stats["offline_pieces"])
        return Result(self.days, nseg, self.k, self.m, round(size), self.stats["lost_segments"], self.min_health,
                      self.stats["repairs"], self.stats["repair_bytes"], model, self.stats["lost_pieces"],
                      self.stats["offline_pieces"], q, self.stats["audits"], self.stats["audits_failed"],
                      self.repairer_after_owner, self.stats["operator_violations"], seconds)


def simulate(**kwargs) -> Result:
    return Sim(**kwargs).run()


def report(r: Result) -> str:
    ratio = r.repair_bytes / r.model_bytes if r.model_bytes else math.nan
    return "\n".join([
        f"protected pin, {r.days} simulated days: 30 nodes (90% uptime, one lost and one joining a day), "
        f"{r.segments} segments at {r.k}+{r.m}, pieces of {r.piece_size} bytes",
        f"  segments lost: {r.lost_segments}; lowest health seen: {r.min_health:.2f}; operator violations: "
        f"{r.operator_violations}",
        f"  pieces lost for good L = {r.lost_pieces}; pieces offline past repair_after O = {r.offline_pieces}; "
        f"q = {r.q:.3f}",
        f"  repairs: {r.repairs} pieces; repair bytes measured {r.repair_bytes:,} vs model k × size × (L + q·O) = "
        f"{r.model_bytes:,.0f}: ratio {ratio:.3f}",
        f"  audits: {r.audits} ({r.audits_failed} failed); repairer after the owner left: {r.repairer_after_owner}",
        f"  {r.seconds:.1f} s of CPU for the year"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--segments", type=int, default=60)
    args = ap.parse_args()
    print(report(simulate(days=args.days, seed=args.seed, segments_n=args.segments)))


if __name__ == "__main__":
    main()
