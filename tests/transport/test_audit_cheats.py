"""The sibling-rebuilding cheat of issue 16 over the real transport: a holder that keeps none of its piece's bytes
(only the 16 KiB subtree roots its piece store caches) and, when challenged, fetches the challenged blocks of k
sibling pieces from the segment's other holders (GetPiece over CURVE), rebuilds its own blocks with the native
decoder and answers. Audited by the owner's real Protector with the real audit deadline on loopback.

What it shows (docs/protection.md, "A holder that rebuilds answers from sibling pieces"):
- the siblings refuse a co-holder's reads (`sibling`) without a repair order, whether it asks as itself or as a
  second node id declaring its operator; its once-a-day whole read answers one audit, then it fails, its
  reputation drops and its piece is rebuilt elsewhere by a new holder fetching k pieces (the figure printed);
- an honest holder reading the pin (a user on a box that holds a piece) still reads it, and every honest holder
  passes every audit in the same run;
- a fresh identity of another operator (open mode's free second identity) is not a co-holder, so it is served;
  whether it reads the challenged blocks narrowly or each sibling whole from its first byte, in order, up to the
  last challenged block, its siblings saw those blocks read in its window (they remember every read they serve,
  and the 300 tiny reads of each sibling it sends next to flush that memory erase nothing), so the auditor
  (edge/protection/siblings.py) audits it again at once, and the second suspect proof fails it;
- meanwhile a reader (another node) reads the file whole through the pieces again and again: honest holders that
  a read happened to make suspect pass their second audit, and every honest holder passes every audit; the
  bytes the cheat fetches per audit, its time, and the honest re-audits are printed."""

import contextlib
import os
import threading
import time

import pytest
import trio

from edge.identity import Identity
from edge.kernels import Decoder
from edge.protect import audit, merkle
from edge.protect import order as orders
from edge.protection import owner as owner_mod
from edge.protection.owner import Protector, kept_manifests
from edge.protection.reader import Reader
from edge.protection.repair import Repairs
from edge.protection.siblings import RECHECKS
from edge.store import Store, content
from edge.store.pieces import PieceNotFound
from edge.store.service import AsyncStore
from edge.transport.client import PeerRefused, open_client
from edge.wire import ErrorCode
from tests.transport.test_protection import add_file, table
from tests.transport.test_repair import holders

RTT = 0.040          # seconds, a round trip between two homes across a town (the model's figure)
UPLINKS = (1e6, 4e6)  # bytes a second: a slow and a good home uplink


class SiblingCheat:
    """Turns a holder's PieceStore into the cheat: its piece file is deleted; audit() rebuilds the challenged
    blocks from k siblings fetched over the network (in a thread of its own running a Trio loop: the store's
    audit is called on the transport's serving thread, which it blocks meanwhile, as a real cheat would). It asks
    as each of `askers` ((identity, operator declared in its Hello)) in turn, each of `modes` in turn: "ranges",
    ranged reads of the challenged blocks; "whole", a read of each sibling piece from its first byte, in order (the
    co-holders' daily allowance), up to the last block it needs. Refused by every sibling every way, it says it
    lost the piece. With flush, it then sends that many 1-byte reads to each sibling piece before answering (more
    than the last 256 reads a piece that holders once kept), hoping the siblings forget its reads."""

    def __init__(self, store, man, segment, piece, siblings, askers, modes=("ranges",)):
        self.store, self.man, self.segment, self.piece = store, man, segment, piece
        self.siblings, self.askers, self.modes = siblings, askers, modes   # siblings: [(piece, root, node, endpoint)]
        self.fetched, self.seconds, self.audits, self.refusals, self.ways = 0, [], 0, 0, []
        self.flush, self.flushed, self.flush_busy = 0, 0, 0   # tiny reads of each sibling after fetching
        self.root = man.segments[segment].roots[piece]
        os.unlink(os.path.join(store.dir, self.root.hex() + ".piece"))   # keeps its index row: subtree roots only
        self._honest = store.audit
        store.audit = self.audit

    def audit(self, identity, root, nonce, beacon, auditor):
        if root != self.root:
            return self._honest(identity, root, nonce, beacon, auditor)
        t0 = time.perf_counter()
        self.audits += 1
        held = self.store.held(root)
        indices = audit.challenge(beacon, auditor, root, nonce, merkle.leaf_count(held.size))
        blocks = sorted({i * merkle.LEAF // merkle.SUBTREE for i in indices})
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("r", trio.run(self._fetch, held.size, blocks)))
        thread.start()
        thread.join()
        if box["r"] is None:
            raise PieceNotFound("the cheat's siblings refused it")
        rebuilt = {}
        for b, parts in box["r"].items():
            have = sorted(parts)[:self.man.k]
            out = bytearray(len(parts[have[0]]))
            Decoder(self.man.k, self.man.m).decode([parts[i] for i in have], have, [out], [self.piece])
            rebuilt[b] = bytes(out)
        proof = audit.answer(identity, rebuilt.__getitem__, list(held.subtrees), held.size, root, nonce, indices)
        self.seconds.append(time.perf_counter() - t0)
        return proof

    async def _fetch(self, size, blocks):
        for ident, operator, *order in self.askers:
            for mode in self.modes:
                try:
                    got = await self._fetch_as(ident, operator, size, blocks, mode == "whole", *order)
                    self.ways.append((mode, operator or "no operator"))
                    return got
                except PeerRefused as exc:
                    if exc.code != ErrorCode.SIBLING:
                        raise
                    self.refusals += 1
        return None

    async def _fetch_as(self, ident, operator, size, blocks, whole, order=b""):
        out = {b: {} for b in blocks}
        errors = []

        async def one(p, root, node, endpoint):
            try:
                async with open_client(ident, endpoint, node, operator=operator) as client:
                    wanted = range(blocks[-1] + 1) if whole else blocks   # a whole read goes from the first byte
                    for b in wanted:
                        start = b * merkle.SUBTREE
                        data, _ = await client.get_piece_range(root, start, min(merkle.SUBTREE, size - start),
                                                               order)
                        self.fetched += len(data)
                        if b in out:
                            out[b][p] = data
                    for i in range(self.flush):   # try to push its reads out of the sibling's memory of reads
                        try:
                            await client.get_piece_range(root, (i * merkle.SUBTREE) % size, 1)
                            self.flushed += 1
                        except PeerRefused as exc:
                            if exc.code != ErrorCode.BUSY:
                                raise
                            self.flush_busy += 1
            except PeerRefused as exc:
                errors.append(exc)
        async with trio.open_nursery() as nursery:
            for sib in self.siblings:
                nursery.start_soon(one, *sib)
        if errors:
            raise errors[0]
        return out


def _siblings(man, by_node, piece):
    return [(p, man.segments[0].roots[p], man.holder_of(0, p), by_node[man.holder_of(0, p)][1])
            for p in range(man.n) if p != piece][:man.k]


@pytest.mark.trio
@pytest.mark.parametrize("coding", ["2+2", "4+4"])
async def test_a_holder_rebuilding_answers_from_siblings_is_refused_caught_and_repaired(tmp_path, coding):
    root_dir = tmp_path / "owner"
    owner = Identity.generate()
    with Store(str(root_dir)) as owner_store, Store(str(tmp_path / "user")) as user_store, \
            contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 6 << 20)   # one segment: pieces of 3 MiB at 2+2, 1.5 MiB at 4+4
        k, m = map(int, coding.split("+"))
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, k + m + 1, stack)   # one spare: the repair's new holder
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]), str(root_dir))
            repairs = protector.repairs = Repairs(protector)
            await protector.protect(root, coding)
            [man] = kept_manifests(str(root_dir))
            by_node = {n[0].node_id: n for n in nodes}

            # a user on a box holding piece 0 opens the file: its siblings serve it whole reads
            honest = by_node[man.holder_of(0, 0)]
            user = Reader(AsyncStore(user_store), honest[0], table(honest[0], [n[:3] for n in nodes]),
                          str(tmp_path / "user"))
            await user.read(root)
            assert b"".join(content.cat(user_store, str(root), 0, None)) == (tmp_path / "file").read_bytes()

            # the cheat: the holder of the first parity piece, asking as itself and as a second node id of its
            # operator (its Hello declares the operator, as a node's hellos to its co-holders do)
            cheat_piece = man.k
            cheater = by_node[man.holder_of(0, cheat_piece)]
            second = Identity.generate()
            # it signs itself a repair order for the second id: a holder the manifest names may order repairs, but
            # not for a node of its own operator
            order = orders.serialize(orders.sign(orders.Order(root, 0, cheat_piece, second.node_id, man.version,
                                                              int(time.time()) + orders.LIFETIME), cheater[0]))
            cheat = SiblingCheat(cheater[2], man, 0, cheat_piece, _siblings(man, by_node, cheat_piece),
                                 [(cheater[0], "cheat-home"), (second, "cheat-home", order), (second, "cheat-home")],
                                 modes=("ranges", "whole"))
            rounds, caught, rechecked = 0, None, 0
            while caught is None and rounds < 12:
                [health] = await protector.health()
                rounds += 1
                for node, r in health["holders"].items():
                    if node == cheater[0].node_id:
                        rechecked += r["rechecked"]
                        if r["failed"]:
                            caught = rounds
                    else:   # honest holders pass every audit
                        assert r["passed"] == r["pieces"] and r["failed"] == 0, (node, r)
            assert caught is not None and cheat.audits == rounds + rechecked
            assert cheat.refusals >= 3 * rounds and ("ranges", "cheat-home") not in cheat.ways
            rep = repairs.reputation_of(cheater[0].node_id)
            assert (0, cheat_piece) in repairs.failed[str(root)]   # its piece counts unhealthy from now on
            before = repairs.stats["bytes_fetched"]
            repaired = await repairs.run()
            [new] = kept_manifests(str(root_dir))
            if man.n - man.k == 2:   # 2+2: one unhealthy piece puts health at 0.5, under 0.75: rebuilt at once
                assert repaired == 1
                moved_to = new.holder_of(0, cheat_piece)
                assert cheater[0].node_id not in {new.holder_of(0, p) for p in range(new.n)}
                fetched = repairs.stats["bytes_fetched"] - before
                assert fetched == man.k * man.piece_size(0) and repairs.stats["bytes_pushed"] == 0
                assert by_node[moved_to][2].held(man.segments[0].roots[cheat_piece]) is not None
                fate = (f"its piece rebuilt on another node, the new holder fetching {fetched} bytes = "
                        f"{fetched / man.piece_size(0):.2f} x the piece (k = {man.k}), the owner pushing 0")
            else:   # 4+4: health (7 - 4)/4 = 0.75 is not under the threshold: repair is lazy and waits for a
                # second unhealthy piece; the cheat goes on failing until its reputation disqualifies it
                assert repaired == 0 and new == man
                more = 0
                while not repairs.reputation_of(cheater[0].node_id).disqualified:
                    [health] = await protector.health()
                    more += 1
                    assert health["holders"][cheater[0].node_id]["failed"] == 1 and more < 12
                fate = (f"its piece unhealthy (health 0.75: rebuilt with the segment's next unhealthy piece), "
                        f"disqualified after {more} more audits (score "
                        f"{repairs.reputation_of(cheater[0].node_id).score:.2f})")
            print(f"\nsibling cheat at {man.k}+{man.m} (piece of {man.piece_size(0)} bytes): caught at audit "
                  f"{caught} ({cheat.audits} challenges, {rechecked} of them a re-audit of a suspect proof; "
                  f"{cheat.refusals} reads refused as itself and as a second id of its operator, with "
                  f"and without a repair order it signed; "
                  f"answered by: {cheat.ways or 'nothing'}); reputation then {rep.score:.2f} "
                  f"(alpha {rep.alpha:.2f}, beta {rep.beta:.2f}); {fate}; the user on a holder read the file whole")

            # a fresh identity of another operator is no co-holder and is served, but its narrow reads of the
            # challenged blocks are what the auditor asks the siblings about after the round (siblings.py)
            other_piece = man.k + 1 if man.m > 1 else 0
            liar = by_node[new.holder_of(0, other_piece)]
            cheat2 = SiblingCheat(liar[2], new, 0, other_piece, _siblings(new, by_node, other_piece),
                                  [(Identity.generate(), "")])
            cheat2.flush = 300
            [health] = await protector.health()
            r = health["holders"][liar[0].node_id]
            assert cheat2.flushed > 0 and cheat2.audits == 1 + RECHECKS and cheat2.refusals == 0 and \
                r["failed"] == 1 and r["rechecked"] == RECHECKS and "3 times in a row" in r["why"], r
            assert all(r["failed"] == 0 for node, r in health["holders"].items()
                       if node not in (cheater[0].node_id, liar[0].node_id)), health["holders"]
            print(f"fresh identity reading the challenged blocks, then {cheat2.flush} 1-byte reads of each sibling "
                  f"({cheat2.flushed} served, {cheat2.flush_busy} refused busy): served, its proof suspect, "
                  f"re-audited at once and failed in audit round 1 ({r['why']})")

            # a fresh identity reading each sibling from its first byte, in order, up to the last challenged block,
            # while a reader of another node reads the file whole through the pieces, again and again
            cheat2.askers, cheat2.modes, cheat2.fetched, cheat2.seconds = [(Identity.generate(), "")], ("whole",), 0, []
            cheat2.audits = 0
            reader_id = Identity.generate()
            reader_store = stack.enter_context(Store(str(tmp_path / "reader")))
            reader = Reader(AsyncStore(reader_store), reader_id, table(reader_id, [n[:3] for n in nodes]),
                            str(tmp_path / "reader"))
            reads, stop = [], trio.Event()

            async def read_again():
                while not stop.is_set():
                    reads.append(await reader.read(root))
            honest_rechecked, honest_audits, audits, caught2 = 0, 0, 6, []
            async with trio.open_nursery() as readers:
                readers.start_soon(read_again)
                for n_audit in range(1, audits + 1):
                    [health] = await protector.health()
                    r = health["holders"][liar[0].node_id]
                    if r["failed"]:
                        caught2.append(n_audit)
                        assert "3 times in a row" in r["why"], r
                    for node, h in health["holders"].items():
                        if node not in (cheater[0].node_id, liar[0].node_id):   # honest: every audit passed
                            assert h["failed"] == 0 and h["passed"] == h["pieces"], (node, h)
                            honest_rechecked += h["rechecked"]
                            honest_audits += h["pieces"]
                stop.set()
            assert caught2 and caught2[0] <= 2 and cheat2.refusals == 0 and reads, (caught2, reads)
            per_audit = cheat2.fetched / cheat2.audits
            per_sibling = per_audit / man.k
            print(f"fresh identity reading siblings whole, in order from their first byte: caught at audit "
                  f"{caught2[0]}, failed {len(caught2)} of {audits} audit rounds ({cheat2.audits} challenges with "
                  f"the re-audits); {per_audit:.0f} bytes per challenge ({per_sibling:.0f} from each of k = "
                  f"{man.k} siblings, {per_sibling / man.piece_size(0):.0%} of a piece); answer time on loopback "
                  f"median {sorted(cheat2.seconds)[len(cheat2.seconds) // 2] * 1e3:.1f} ms")
            print(f"  meanwhile a reader of another node read the file whole {len(reads)} times "
                  f"({sum(x['bytes'] for x in reads)} bytes of pieces); the honest holders passed all "
                  f"{honest_audits} of their audits, {honest_rechecked} of them re-audited after a suspect proof")
            nursery.cancel_scope.cancel()
