"""Repair of protected pins over the real transport: holders on loopback (real Stores, PieceStores, CURVE), the
owner's audits feeding health and reputation (edge/protection/repair.py), lost pieces rebuilt on other nodes."""

import contextlib
import functools
import os
import time

import pytest
import trio

from edge.identity import Identity
from edge.protect import merkle
from edge.protection import owner as owner_mod
from edge.protection.newholder import RepairWork
from edge.protection.owner import Protector, kept_manifests
from edge.protection.reader import Reader
from edge.protection.repair import Repairs
from edge.store import Store, content
from edge.store.pieces import PieceStore
from edge.store.service import AsyncStore
from edge.transport.server import Policy, serve_transport
from tests.transport.test_protection import add_file, table


async def _holder(store, ident, pieces, *, task_status=trio.TASK_STATUS_IGNORED):
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(functools.partial(serve_transport, store, ident, Policy(), "tcp://127.0.0.1:0",
                                                       pieces=pieces))
        work = RepairWork(pieces, ident)   # as the agent wires it: repairs asked of this holder are computed here
        await nursery.start(work.serve)
        handle.server.repairing = work.order
        task_status.started((nursery.cancel_scope, handle))


async def holders(nursery, tmp_path, count, stack, share=64 << 20):
    """[(identity, endpoint, PieceStore, cancel scope)]: cancelling the scope takes that holder offline."""
    out = []
    for i in range(count):
        d = str(tmp_path / f"h{i}")
        store = stack.enter_context(Store(d))
        pieces = PieceStore(d, share)
        stack.callback(pieces.close)
        ident = Identity.generate()
        scope, handle = await nursery.start(_holder, store, ident, pieces)
        out.append((ident, handle.endpoint, pieces, scope))
    return out


def held_pieces(nodes, man):
    """Per (segment, piece): whether its holder in man keeps a copy that matches the piece root."""
    by_node = {n[0].node_id: n[2] for n in nodes}
    out = {}
    for s, seg in enumerate(man.segments):
        for p in range(man.n):
            store = by_node[man.holder_of(s, p)]
            held = store.held(seg.roots[p])
            out[(s, p)] = held is not None and merkle.build(store.read(seg.roots[p], 0, 1 << 30)[0]).root == \
                seg.roots[p]
    return out


@pytest.fixture
def quick_audits(monkeypatch):
    monkeypatch.setattr(owner_mod, "HELLO_TIMEOUT", 1.0)   # an offline holder is given up on sooner


@pytest.mark.trio
async def test_a_damaged_piece_is_read_around_fails_its_audit_and_is_rebuilt_elsewhere(tmp_path, quick_audits):
    root_dir = tmp_path / "owner"
    owner = Identity.generate()
    with Store(str(root_dir)) as owner_store, Store(str(tmp_path / "reader")) as mine, \
            contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 6 << 20)
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, 6, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]), str(root_dir))
            repairs = protector.repairs = Repairs(protector)
            await protector.protect(root, "2+2")
            [man] = kept_manifests(str(root_dir))
            bad = man.holder_of(0, 1)
            bad_store = next(n[2] for n in nodes if n[0].node_id == bad)
            with open(os.path.join(bad_store.dir, man.segments[0].roots[1].hex() + ".piece"), "r+b") as f:
                raw = bytearray(f.read())
                for i in range(0, len(raw), 1024):
                    raw[i] ^= 0x01
                f.seek(0)
                f.write(raw)
            # the read still succeeds (the damaged piece fails its root and another is taken)
            reader_id = Identity.generate()
            reader = Reader(AsyncStore(mine), reader_id, table(reader_id, [n[:3] for n in nodes]),
                            str(tmp_path / "reader"))
            await reader.read(root)
            assert b"".join(content.cat(mine, str(root), 0, None)) == (tmp_path / "file").read_bytes()
            # that holder fails its next audit; its reputation records it
            [health] = await protector.health()
            assert health["holders"][bad]["bad"] == [(0, 1)] and health["healthy"] == health["pieces"] - 1
            assert repairs.reputation[bad].failed == 1
            assert all(r.failed == 0 for node, r in repairs.reputation.items() if node != bad)
            # one failed piece of 2+2: health (3 - 2)/2 = 0.5 < 0.75, rebuilt on a node not holding the segment
            assert await repairs.run() == 1
            [new] = kept_manifests(str(root_dir))
            assert new.version == man.version + 1 and new.signer == owner.node_id
            moved = new.holder_of(0, 1)
            assert moved != bad and moved not in {man.holder_of(0, p) for p in range(man.n)}
            assert all(held_pieces(nodes, new).values())
            assert bad_store.held(man.segments[0].roots[1]) is None   # the damaged copy was released
            size = man.piece_size(0)
            print(f"\nrepair of one {size}-byte piece at 2+2: fetched {repairs.stats['bytes_fetched']} bytes "
                  f"({repairs.stats['bytes_fetched'] / size:.2f} x the piece), pushed {repairs.stats['bytes_pushed']}")
            assert repairs.stats["bytes_fetched"] == man.k * size
            # every holder has the new manifest; the next audit finds every piece healthy
            by_node = {n[0].node_id: n[2] for n in nodes}
            assert all(by_node[node].manifest(root) is not None for node in new.holders)
            [health] = await protector.health()
            assert health["healthy"] == health["pieces"]
            assert await repairs.run() == 0
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_holder_away_shorter_than_repair_after_costs_nothing_longer_is_repaired(tmp_path, quick_audits):
    root_dir = tmp_path / "owner"
    owner = Identity.generate()
    now = [1_000_000.0]
    with Store(str(root_dir)) as owner_store, contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 20 << 20)   # three segments
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, 7, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]), str(root_dir))
            repairs = protector.repairs = Repairs(protector, repair_after=4 * 3600.0, clock=lambda: now[0])
            await protector.protect(root, "2+2")
            [man] = kept_manifests(str(root_dir))
            await protector.health()   # everyone answers: seen now
            away = man.holder_of(0, 0)
            lost = [(s, p) for s in range(len(man.segments)) for p in range(man.n) if man.holder_of(s, p) == away]
            next(n[3] for n in nodes if n[0].node_id == away).cancel()
            now[0] += 3600.0   # an hour away: within repair_after
            [health] = await protector.health()
            assert not health["holders"][away]["reached"]
            assert await repairs.run() == 0 and kept_manifests(str(root_dir))[0].version == man.version
            now[0] += 4 * 3600.0   # five hours away: its pieces are rebuilt elsewhere
            await protector.health()
            assert await repairs.run() == len(lost)
            [new] = kept_manifests(str(root_dir))
            assert away not in new.holders and all(held_pieces(
                [n for n in nodes if n[0].node_id != away], new).values())
            [health] = await protector.health()
            assert health["healthy"] == health["pieces"] == len(man.segments) * man.n   # back to n per segment
            sizes = sum(man.piece_size(s) for s, _ in lost)
            print(f"\n{len(lost)} pieces ({sizes} bytes) of a holder away 5 h rebuilt at {man.k}+{man.m}: fetched "
                  f"{repairs.stats['bytes_fetched']} bytes = {repairs.stats['bytes_fetched'] / sizes:.2f} x the "
                  f"lost pieces (k = {man.k}), pushed {repairs.stats['bytes_pushed']}")
            assert repairs.stats["bytes_fetched"] == man.k * sizes
            # between audit rounds: a holder the peer table no longer lists (its probes failed until it expired)
            # is repaired once away past repair_after, with no audit in between (Repairs.watch)
            gone = new.holder_of(0, 0)
            lost = [(s, p) for s in range(len(new.segments)) for p in range(new.n) if new.holder_of(s, p) == gone]
            next(n[3] for n in nodes if n[0].node_id == gone).cancel()
            protector.peers.gone(gone)
            assert await repairs.watch() == 0 and not repairs.online[gone]   # just gone: within repair_after
            now[0] += 3600.0
            assert await repairs.watch() == 0 and kept_manifests(str(root_dir))[0].version == new.version
            now[0] += 4 * 3600.0
            fetched = repairs.stats["bytes_fetched"]
            assert await repairs.watch() == len(lost)
            [third] = kept_manifests(str(root_dir))
            assert gone not in third.holders and all(held_pieces(
                [n for n in nodes if n[0].node_id not in (away, gone)], third).values())
            print(f"peer table, no audit: {len(lost)} pieces of a holder gone 5 h rebuilt, fetched "
                  f"{repairs.stats['bytes_fetched'] - fetched} bytes")
            nursery.cancel_scope.cancel()


async def owner_node(nursery, store, ident, repairs):
    """The owner's own transport server (it hears Moved) with its repairs service; its (identity, endpoint)."""
    handle = await nursery.start(functools.partial(serve_transport, store, ident, Policy(), "tcp://127.0.0.1:0"))
    handle.server.moved = repairs.moved
    await nursery.start(repairs.serve)
    return ident, handle.endpoint, None


async def until_moved(root_dir, gone):
    with trio.fail_after(30):
        while True:
            [man] = kept_manifests(str(root_dir))
            if gone not in man.holders:
                return man
            await trio.sleep(0.05)


@pytest.mark.trio
async def test_leave_hands_every_piece_over_and_a_leave_killed_half_way_is_finished_by_repair(tmp_path,
                                                                                              quick_audits):
    from edge.protection.leave import leave
    root_dir = tmp_path / "owner"
    owner = Identity.generate()
    now = [1_000_000.0]
    with Store(str(root_dir)) as owner_store, contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 20 << 20)   # three segments
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, 7, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]), str(root_dir))
            repairs = protector.repairs = Repairs(protector, clock=lambda: now[0])
            me = await owner_node(nursery, owner_store, owner, repairs)
            await protector.protect(root, "2+2")
            [man] = kept_manifests(str(root_dir))
            counts = {n[0].node_id: len(n[2].pieces()) for n in nodes}
            # a graceful leave: every piece moved once, the owner told, the manifest updated
            leaver = max(nodes, key=lambda n: counts[n[0].node_id])
            ident, _, store, scope = leaver
            peers = table(ident, [me] + [n[:3] for n in nodes if n is not leaver])
            held_bytes = sum(h.size for h in store.pieces())
            done = await leave(store, ident, peers)
            print(f"\nleave: {done['moved']} of {done['pieces']} pieces, {done['bytes']} bytes moved for "
                  f"{held_bytes} bytes held ({done['bytes'] / held_bytes:.2f}x), {done['owners_told']} owner "
                  f"messages, {done['seconds']} s")
            assert done["safe"] and done["moved"] == counts[ident.node_id] and done["bytes"] == held_bytes
            assert store.pieces() == []
            new = await until_moved(root_dir, ident.node_id)
            assert new.version > man.version and all(held_pieces(nodes, new).values())
            assert all(len({new.holder_of(s, p) for p in range(new.n)}) == new.n for s in range(len(new.segments)))
            scope.cancel()
            [health] = await protector.health()
            assert health["healthy"] == health["pieces"] and ident.node_id not in health["holders"]
            assert await repairs.run() == 0   # nothing to repair: the leave cost no repair
            # a leave killed after its first piece: the rest is rebuilt by repair once past repair_after
            rest = [n for n in nodes if n is not leaver]
            counts = {n[0].node_id: len(n[2].pieces()) for n in rest}
            ident, _, store, scope = max(rest, key=lambda n: counts[n[0].node_id])
            before = counts[ident.node_id]
            assert before >= 2
            peers = table(ident, [me] + [n[:3] for n in rest if n[0] is not ident])
            with trio.CancelScope() as killed:
                async def watch():
                    while len(store.pieces()) == before:
                        await trio.sleep(0.02)
                    killed.cancel()   # it is asleep after its first piece (the upload limit below)
                nursery.start_soon(watch)
                await leave(store, ident, peers, upload=1)
            scope.cancel()   # the box is unplugged
            assert len(store.pieces()) == before - 1
            left_bytes = sum(h.size for h in store.pieces())
            with trio.fail_after(30):   # the owner heard of the one piece that moved
                while kept_manifests(str(root_dir))[0].version < new.version + 1:
                    await trio.sleep(0.05)
            [health] = await protector.health()
            assert not health["holders"][ident.node_id]["reached"]
            assert await repairs.run() == 0   # away for less than repair_after: nothing yet
            now[0] += 5 * 3600.0
            await protector.health()
            fetched = repairs.stats["bytes_fetched"]
            assert await repairs.run() == before - 1
            final = await until_moved(root_dir, ident.node_id)
            assert all(held_pieces(nodes, final).values())
            [health] = await protector.health()
            assert health["healthy"] == health["pieces"] == len(man.segments) * man.n
            print(f"leave killed after 1 of {before} pieces: repair rebuilt the {before - 1} left ({left_bytes} "
                  f"bytes), fetching {repairs.stats['bytes_fetched'] - fetched} bytes "
                  f"({(repairs.stats['bytes_fetched'] - fetched) / left_bytes:.2f}x, k = {man.k})")
            nursery.cancel_scope.cancel()


def test_a_repairer_signed_update_is_accepted_only_chained_from_the_owners():
    from edge.ipld.cid import CID
    from edge.protect import manifest as manifests
    chain = manifests.chain
    owner, holder_ids, outsider, newcomer = Identity.generate(), [Identity.generate() for _ in range(4)], \
        Identity.generate(), Identity.generate()
    entry = (4096, [CID.for_block(b"a")], [bytes([i]) * 32 for i in range(4)], [h.node_id for h in holder_ids])
    base = manifests.sign(manifests.make(CID.for_block(b"a"), 2, 2, [entry], owner.node_id, 1), owner)
    moved = manifests.with_holders(base, {(0, 1): newcomer.node_id}, 2)
    by_holder = manifests.sign(moved, holder_ids[0])
    by_outsider = manifests.sign(moved, outsider)
    assert chain([base]) == base and chain([by_holder]) is None   # no owner's manifest: nothing to chain from
    assert chain([by_outsider, base]) == base                     # not a holder the owner named
    assert chain([base, by_holder, by_outsider]) == by_holder
    changed = manifests.sign(manifests.with_holders(base, {}, 2), holder_ids[1])
    import dataclasses
    forged = manifests.sign(dataclasses.replace(changed, k=1, m=3), holder_ids[1])   # more than holders changed
    assert chain([base, forged]) == base


@pytest.mark.trio
async def test_a_reader_follows_a_holder_repair_made_while_the_owner_was_gone(tmp_path):
    """The owner is gone; a holder rebuilds a lost piece on a new node, signs the next manifest version and hands
    it to that node; a reader that reaches only k holders, the new one among them, reads the pin through it."""
    from edge.protect import manifest as manifests
    from edge.store.pieces import LEASE_MAX
    from edge.store.stripe import rebuild_piece
    from edge.transport.client import open_client
    import time
    root_dir = tmp_path / "owner"
    owner = Identity.generate()
    with Store(str(root_dir)) as owner_store, Store(str(tmp_path / "reader")) as mine, \
            contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 6 << 20)   # one segment
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, 6, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]), str(root_dir))
            await protector.protect(root, "2+2")
            [man] = kept_manifests(str(root_dir))
            by_node = {n[0].node_id: n for n in nodes}
            lost, other = man.holder_of(0, 0), man.holder_of(0, 1)   # away, with another: only 2 of 4 left
            repairer = by_node[man.holder_of(0, 2)]
            newcomer = next(n for n in nodes if n[0].node_id not in {man.holder_of(0, p) for p in range(man.n)})
            size, seg = man.piece_size(0), man.segments[0]
            got = {}
            for p in (2, 3):
                ident, endpoint = by_node[man.holder_of(0, p)][:2]
                async with open_client(repairer[0], endpoint, ident.node_id) as c:
                    got[p] = await c.get_piece(seg.roots[p], size)
            piece = rebuild_piece(got, man.k, man.m, seg.length, 0)
            update = manifests.sign(manifests.with_holders(man, {(0, 0): newcomer[0].node_id}, int(time.time())),
                                    repairer[0])
            async with open_client(repairer[0], newcomer[1], newcomer[0].node_id) as c:
                await c.store_piece(root, 0, 0, piece, int(time.time() + LEASE_MAX), root=seg.roots[0])
                await c.put_manifest(root, manifests.serialize(update))
            reader_id = Identity.generate()
            gone = {lost, other, man.holder_of(0, 3)}   # left: piece 2 and the rebuilt piece 0, just k
            seen = [n[:3] for n in nodes if n[0].node_id not in gone]
            reader = Reader(AsyncStore(mine), reader_id, table(reader_id, seen), str(tmp_path / "reader"))
            got_man = await reader.manifest(root)
            assert got_man.signer == repairer[0].node_id and got_man.version == man.version + 1
            done = await reader.read(root)
            assert done["pieces"] == man.k and done["failed"] == 0
            assert b"".join(content.cat(mine, str(root), 0, None)) == (tmp_path / "file").read_bytes()
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_with_the_owner_gone_the_chosen_holder_repairs_and_a_reader_follows(tmp_path, quick_audits):
    """The owner is gone and a holder is away past repair_after: the holder repair.py chooses (and no other)
    rebuilds its pieces on new nodes, signs the next manifest version, and a reader that reaches just k holders
    of segment 0, the new one among them, reads the pin through it."""
    from edge.discovery.peers import PeerInfo
    from edge.protect import repair as planning
    from edge.protect import manifest as manifests
    from edge.protection.custody import Custody
    from edge.store.pieces import LEASE_MAX
    from edge.transport.client import PeerRefused, open_client
    from edge.transport.piececlient import PieceAnswerError
    root_dir = tmp_path / "owner"
    owner = Identity.generate()
    now = [1_000_000.0]
    with Store(str(root_dir)) as owner_store, Store(str(tmp_path / "reader")) as mine, \
            contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 6 << 20)   # one segment
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, 6, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]), str(root_dir))
            await protector.protect(root, "2+2")   # then the owner is gone: it never serves
            [man] = kept_manifests(str(root_dir))
            by_node = {n[0].node_id: n for n in nodes}
            lost = man.holder_of(0, 0)

            def custody(node):
                ident = by_node[node][0]
                peers = table(ident, [n[:3] for n in nodes if n[0] is not ident])
                peers.seen(PeerInfo(owner.node_id, ["127.0.0.1"], 9))   # nothing listens there
                return Custody(by_node[node][2], ident, peers, clock=lambda: now[0])
            cares = {node: custody(node) for node in man.holders if node != lost}
            by_node[lost][3].cancel()
            assert [await c.run() for c in cares.values()] == [0] * len(cares)   # just gone: within repair_after
            now[0] += 5 * 3600.0
            # the owner's leases are near their end (as 29 days after it left): only a custodian can renew them
            soon = time.time() + 3600
            for node in man.holders:
                store = by_node[node][2]
                with store._lock:
                    for held in store.pieces():
                        store._set_lease(held, soon)
            states = {node: planning.NodeState(node != lost, now[0]) for node in man.holders}
            chosen = planning.repairer(bytes(root), owner.node_id, [man.holders], states, now[0])
            done = {node: await c.run() for node, c in cares.items()}
            assert done == {node: (1 if node == chosen else 0) for node in cares}
            new = cares[chosen].updates[str(root)]
            assert new.signer == chosen and new.version == man.version + 1 and lost not in new.holders
            # the chosen holder renewed every piece of the pin at every holder, the owner's included
            assert cares[chosen].stats["renewed"] == new.n
            for p in range(new.n):
                held = by_node[new.holder_of(0, p)][2].held(new.segments[0].roots[p])
                assert held.lease > time.time() + LEASE_MAX - 3600, (p, held)
            # a node no manifest of the chain names renews nothing, even after handing over a manifest it signed
            outsider = next(n for n in nodes if n[0].node_id not in new.holders and n[0].node_id != lost)
            target = by_node[new.holder_of(0, 1)]
            forged = manifests.sign(manifests.with_holders(new, {(0, 1): outsider[0].node_id}, int(now[0])),
                                    outsider[0])
            async with open_client(outsider[0], target[1], target[0].node_id) as client:
                with pytest.raises((PeerRefused, PieceAnswerError)):
                    await client.put_manifest(root, manifests.serialize(forged))
                assert await client.renew_leases([new.segments[0].roots[1]], int(time.time() + LEASE_MAX)) == \
                    (False,)
            size = man.piece_size(0)
            print(f"\nowner gone: holder repair of one {size}-byte piece: its new holder fetched "
                  f"{cares[chosen].stats['bytes_fetched']} bytes (k = {man.k} pieces), the repairer pushed "
                  f"{cares[chosen].stats['bytes_pushed']}")
            assert cares[chosen].stats["bytes_fetched"] == man.k * size
            reader_id = Identity.generate()
            keep = {new.holder_of(0, 0), chosen}   # the rebuilt piece and the repairer's own: just k
            seen = [n[:3] for n in nodes if n[0].node_id in keep or n[0].node_id not in new.holders]
            reader = Reader(AsyncStore(mine), reader_id, table(reader_id, seen), str(tmp_path / "reader"))
            assert (await reader.manifest(root)).signer == chosen
            done = await reader.read(root)
            assert done["pieces"] == man.k and done["failed"] == 0
            assert b"".join(content.cat(mine, str(root), 0, None)) == (tmp_path / "file").read_bytes()
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_audit_results_feed_reputation_and_a_disqualified_holders_pieces_count_unhealthy():
    from edge.protect import repair as planning
    from edge.protect.placement import Candidate, score
    repairs = Repairs(protector=None, clock=lambda: 100.0)

    def round_(passed_a, failed_a):
        return [{"cid": "c", "holders": {
            "a": {"reached": True, "passed": passed_a, "failed": failed_a, "bad": [(0, p) for p in range(failed_a)]},
            "b": {"reached": True, "passed": 2, "failed": 0, "bad": []},
            "c": {"reached": False, "passed": 0, "failed": 0, "bad": []}}}]
    repairs.record(round_(2, 0))
    assert repairs.reputation_of("a").passed == 2 and not repairs.state("a", 100.0).disqualified
    assert repairs.state("c", 100.0) == planning.NodeState(False, 100.0)   # away: its grace runs from now
    for _ in range(3):
        repairs.record(round_(0, 2))
    a, b = repairs.reputation_of("a"), repairs.reputation_of("b")
    print(f"\nafter 2 passes and 6 failures: score {a.score:.2f} (disqualified below 0.6); a clean one {b.score:.2f}")
    assert a.disqualified and repairs.state("a", 100.0).disqualified and not b.disqualified
    assert repairs.failed["c"] == {(0, 0), (0, 1)}
    assert not planning.piece_healthy(repairs.state("a", 100.0), 100.0)
    # placement reads the record: the failing node scores below the clean one, and a disqualified one is never chosen
    assert score(Candidate("a", share=10, free=10, reputation=a), False) == 0.0 < \
        score(Candidate("b", share=10, free=10, reputation=b), False)
