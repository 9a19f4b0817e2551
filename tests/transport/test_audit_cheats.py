"""The sibling-rebuilding cheat of issue 16, measured over the real transport: a holder that keeps none of its
piece's bytes (only the 16 KiB subtree roots its piece store caches) and, when challenged, fetches the challenged
16 KiB blocks of k sibling pieces from the other holders (GetPiece ranges over CURVE, as any neighbour may ask),
rebuilds its own blocks with the native decoder and answers. Audited by the owner's real Protector with the real
audit deadline (owner.HELLO_TIMEOUT per answer, AUDIT_TRIES tries) on loopback.

What it shows (docs/protection.md, "A holder that rebuilds answers from sibling pieces"): the answers verify, so
the audit alone does not tell this holder from an honest one; the deadline does not catch it either, on loopback
or at home uplinks, because a challenge touches 4 blocks: the figures printed are the bytes it must fetch per
audit and the time it needs against the deadline."""

import contextlib
import os
import threading
import time

import pytest
import trio

from edge.identity import Identity
from edge.kernels import Decoder
from edge.protect import audit, merkle
from edge.protection import owner as owner_mod
from edge.protection.owner import Protector, kept_manifests
from edge.store import Store
from edge.store.service import AsyncStore
from edge.transport.client import open_client
from tests.transport.test_protection import add_file, table
from tests.transport.test_repair import holders

RTT = 0.040          # seconds, a round trip between two homes across a town (the model's figure)
UPLINKS = (1e6, 4e6)  # bytes a second: a slow and a good home uplink


class SiblingCheat:
    """Turns a holder's PieceStore into the cheat: its piece file is deleted; audit() rebuilds the challenged
    blocks from k siblings fetched over the network (in a thread of its own running a Trio loop: the store's
    audit is called on the transport's serving thread, which it blocks meanwhile, as a real cheat would)."""

    def __init__(self, store, ident, man, segment, piece, siblings):
        self.store, self.ident, self.man, self.segment, self.piece = store, ident, man, segment, piece
        self.siblings = siblings   # [(piece number, its root, node id, endpoint)], k of them
        self.fetched, self.seconds, self.audits = 0, [], 0
        root = man.segments[segment].roots[piece]
        os.unlink(os.path.join(store.dir, root.hex() + ".piece"))   # keeps its index row: subtree roots only
        store.audit = self.audit

    def audit(self, identity, root, nonce, beacon, auditor):
        t0 = time.perf_counter()
        held = self.store.held(root)
        indices = audit.challenge(beacon, auditor, root, nonce, merkle.leaf_count(held.size))
        blocks = sorted({i * merkle.LEAF // merkle.SUBTREE for i in indices})
        rebuilt = {}
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("r", trio.run(self._fetch, held.size, blocks)))
        thread.start()
        thread.join()
        for b, parts in box["r"].items():
            width = len(next(iter(parts.values())))
            have = sorted(parts)
            out = bytearray(width)
            Decoder(self.man.k, self.man.m).decode([parts[i] for i in have], have, [out], [self.piece])
            rebuilt[b] = bytes(out)
        proof = audit.answer(identity, rebuilt.__getitem__, list(held.subtrees), held.size, root, nonce, indices)
        self.seconds.append(time.perf_counter() - t0)
        self.audits += 1
        return proof

    async def _fetch(self, size, blocks):
        out = {b: {} for b in blocks}

        async def one(p, root, node, endpoint):
            async with open_client(self.ident, endpoint, node) as client:
                for b in blocks:
                    start = b * merkle.SUBTREE
                    data, _ = await client.get_piece_range(root, start, min(merkle.SUBTREE, size - start))
                    out[b][p] = data
                    self.fetched += len(data)
        async with trio.open_nursery() as nursery:
            for sib in self.siblings:
                nursery.start_soon(one, *sib)
        return out


@pytest.mark.trio
@pytest.mark.parametrize("coding", ["2+2", "4+4"])
async def test_a_holder_rebuilding_answers_from_siblings_is_not_caught_by_the_deadline_figures(tmp_path, coding):
    root_dir = tmp_path / "owner"
    owner = Identity.generate()
    with Store(str(root_dir)) as owner_store, contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 6 << 20)   # one segment: pieces of 3 MiB at 2+2, 1.5 MiB at 4+4
        k, m = map(int, coding.split("+"))
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, k + m + 1, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]), str(root_dir))
            await protector.protect(root, coding)
            [man] = kept_manifests(str(root_dir))
            by_node = {n[0].node_id: n for n in nodes}
            cheat_piece = man.k   # a parity piece: rebuilding it is a full decode from the k data pieces
            cheater = by_node[man.holder_of(0, cheat_piece)]
            siblings = [(p, man.segments[0].roots[p], man.holder_of(0, p), by_node[man.holder_of(0, p)][1])
                        for p in range(man.k)]
            cheat = SiblingCheat(cheater[2], cheater[0], man, 0, cheat_piece, siblings)
            assert cheater[2].held(man.segments[0].roots[cheat_piece]) is not None
            rounds = 12
            outcomes = []
            for _ in range(rounds):
                [health] = await protector.health()
                outcomes.append(health["holders"][cheater[0].node_id])
            # every challenge was put to the cheat, which holds no byte of its piece, and every answer verified
            assert cheat.audits == rounds
            assert not os.path.exists(os.path.join(cheater[2].dir, man.segments[0].roots[cheat_piece].hex() + ".piece"))
            assert all(o["passed"] == 1 and o["failed"] == 0 for o in outcomes), outcomes
            per_audit = cheat.fetched / rounds
            per_sibling = per_audit / man.k
            worst = max(cheat.seconds)
            print(f"\nsibling-rebuilding cheat at {man.k}+{man.m}, piece of {man.piece_size(0)} bytes: "
                  f"{rounds} of {rounds} audits passed; fetched {per_audit:.0f} bytes per audit "
                  f"({per_sibling:.0f} from each of k = {man.k} siblings); answer time on loopback median "
                  f"{sorted(cheat.seconds)[rounds // 2] * 1e3:.1f} ms, worst {worst * 1e3:.1f} ms; deadline "
                  f"{owner_mod.HELLO_TIMEOUT:g} s per answer x {owner_mod.AUDIT_TRIES} tries")
            for uplink in UPLINKS:
                # a CURVE handshake (2 round trips) and one request per challenged block, siblings in parallel
                need = 2 * RTT + audit.S * RTT + per_sibling / uplink
                print(f"  at {uplink / 1e6:g} MB/s uplinks and {RTT * 1e3:g} ms round trips: {need:.2f} s needed "
                      f"per audit vs the {owner_mod.HELLO_TIMEOUT:g} s deadline "
                      f"({owner_mod.HELLO_TIMEOUT / need:.0f}x headroom for the cheat)")
            nursery.cancel_scope.cancel()
