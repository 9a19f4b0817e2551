"""The owner's side of protected pins over the real transport: holders on loopback (real Stores, PieceStores,
CURVE), the owner's Protector cutting, encoding and pushing a real DAG, and what the holders then keep."""

import functools
import os
import random
import time

import pytest
import trio

from edge.discovery.peers import PeerInfo, PeerTable
from edge.identity import Identity
from edge.protect import manifest as manifests
from edge.protect import merkle, segments
from edge.protection.owner import ProtectFailed, Protector, kept_manifests, manifest_path, serve_renewals
from edge.store import Store, content
from edge.store.pieces import PieceStore
from edge.store.service import AsyncStore
from edge.transport.client import open_client
from edge.transport.server import Policy, serve_transport


@pytest.fixture
def owner_store(tmp_path):
    with Store(str(tmp_path / "owner")) as s:
        yield s


class Prefer:
    """A placement's random source that draws `node` whenever it may (so the test knows it is asked first)."""

    def __init__(self, node):
        self.node = node

    def choice(self, seq):
        return next((c for c in seq if c.node == self.node), random.choice(seq))


servers = []


async def holders(nursery, tmp_path, shares, stack):
    """Holder nodes serving on loopback: [(identity, endpoint, PieceStore)]; their handles in `servers`."""
    out = []
    servers.clear()
    for i, share in enumerate(shares):
        d = str(tmp_path / f"h{i}")
        store = stack.enter_context(Store(d))
        pieces = PieceStore(d, share)
        stack.callback(pieces.close)
        ident = Identity.generate()
        handle = await nursery.start(functools.partial(serve_transport, store, ident, Policy(), "tcp://127.0.0.1:0",
                                                       pieces=pieces))
        out.append((ident, handle.endpoint, pieces))
        servers.append(handle)
    return out


def table(owner, nodes):
    peers = PeerTable(owner.node_id, 60)
    for ident, endpoint, _ in nodes:
        peers.seen(PeerInfo(ident.node_id, ["127.0.0.1"], int(endpoint.rsplit(":", 1)[1])))
    return peers


def add_file(store, tmp_path, size, seed=7):
    path = tmp_path / "file"
    path.write_bytes(random.Random(seed).randbytes(size))
    return content.add(store, str(path)).cid


@pytest.mark.trio
async def test_pieces_land_on_distinct_holders_verified(owner_store, tmp_path):
    import contextlib
    root = add_file(owner_store, tmp_path, 20 << 20)   # three segments
    owner = Identity.generate()
    with contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, [64 << 20] * 6, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, nodes), str(tmp_path / "owner"))
            t0 = time.perf_counter()
            summary = await protector.protect(root, "auto")   # N = 6: 2+2
            print(f"\nprotected 20 MiB at {summary['k']}+{summary['m']} in {time.perf_counter() - t0:.2f} s, "
                  f"{summary['bytes_sent']} bytes sent to {len(summary['holders'])} holders")
            assert (summary["k"], summary["m"], summary["eligible"]) == (2, 2, 6)
            [man] = kept_manifests(str(tmp_path / "owner"))
            assert man.root == root and man.owner == owner.node_id and len(man.segments) == summary["segments"] >= 3
            by_node = {ident.node_id: pieces for ident, _, pieces in nodes}
            cids = []
            for s, seg in enumerate(man.segments):
                where = [man.holder_of(s, p) for p in range(man.n)]
                assert len(set(where)) == man.n   # distinct holders
                got = {}
                for p, node in enumerate(where):
                    held = by_node[node].held(seg.roots[p])
                    assert held is not None and held.owner == owner.node_id and held.index == p
                    data, _ = by_node[node].read(seg.roots[p], 0, 1 << 30)
                    assert merkle.build(data).root == seg.roots[p]
                    if p >= man.k:   # decode from the parity pieces alone
                        got[p] = data
                cids += [cid for cid, _ in segments.decode(got, man.k, man.m, seg.length).blocks]
            assert [str(c) for c in cids] == [str(c) for c, _ in content.walk_blocks(owner_store, root)]
            # a reader that holds nothing asks a holder for the manifest and checks its signature
            ident, endpoint, _ = next(n for n in nodes if n[0].node_id == man.holders[0])
            async with open_client(Identity.generate(), endpoint, ident.node_id) as c:
                assert manifests.parse(await c.get_manifest(root)) == man
            assert await protector.renew() == len(man.segments) * man.n
            t0 = time.perf_counter()
            [health] = await protector.health()
            print(f"audited {health['pieces']} pieces in {time.perf_counter() - t0:.3f} s")
            assert health["healthy"] == health["pieces"] == len(man.segments) * man.n
            # bits flipped in one stored piece: its holder fails the next audit of it, the rest pass
            bad = man.holder_of(0, 1)
            piece_file = os.path.join(by_node[bad].dir, man.segments[0].roots[1].hex() + ".piece")
            with open(piece_file, "r+b") as f:
                raw = bytearray(f.read())
                for i in range(0, len(raw), 1024):
                    raw[i] ^= 0xFF
                f.seek(0)
                f.write(raw)
            for _ in range(2):   # two epochs: the beacon chain with each holder advances
                [health] = await protector.health()
                assert health["healthy"] == health["pieces"] - 1
                assert health["holders"][bad]["failed"] == 1 and "damaged" in health["holders"][bad]["why"]
            # the upkeep service audits and renews on its own (short intervals here); the damaged piece shows
            upkeep = await nursery.start(functools.partial(serve_renewals, protector, 0.3, 0.2))
            with trio.fail_after(20):
                while upkeep.stats()["renewed"] < len(man.segments) * man.n or upkeep.stats()["audits"] < 1:
                    await trio.sleep(0.05)
            assert upkeep.stats()["failed"] >= 1
            assert (await protector.release(root))["released"] == len(man.segments) * man.n   # unpinned
            assert all(pieces.pieces() == [] for _, _, pieces in nodes)
            assert kept_manifests(str(tmp_path / "owner")) == []
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_full_holder_is_replaced_and_too_few_are_refused(owner_store, tmp_path):
    import contextlib
    root = add_file(owner_store, tmp_path, 3 << 20)
    owner = Identity.generate()
    with contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, [64 << 20, 64 << 20, 1024, 6 << 20], stack)
            full = nodes[2][0].node_id
            protector = Protector(AsyncStore(owner_store), owner, table(owner, nodes), str(tmp_path / "owner"),
                                  rng=Prefer(full))
            summary = await protector.protect(root, "1+1")   # two whole copies; the 1 KiB share refuses (FULL)
            assert full not in summary["holders"] and len(summary["holders"]) == 2
            assert nodes[2][2].pieces() == [] and servers[2].stats()["pieces_full"] == 1
            with pytest.raises(ProtectFailed, match="is protected already"):
                await protector.protect(root, "1+1")
            assert os.path.exists(manifest_path(str(tmp_path / "owner"), root))
            other = add_file(owner_store, tmp_path, 1 << 20, seed=8)
            with pytest.raises(manifests.ProtectError, match="need k\\+m\\+1 = 5 eligible neighbours"):
                await protector.protect(other, "2+2")
            # too few holders with room for a 20 MiB file's pieces (the 6 MiB share takes one of its 4 MiB
            # pieces): what was handed out is taken back
            big = add_file(owner_store, tmp_path, 20 << 20, seed=9)
            before = [len(n[2].pieces()) for n in nodes]
            with pytest.raises(ProtectFailed, match="keeps no spare piece"):
                await protector.protect(big, "3+0")
            with pytest.raises(ProtectFailed, match="no neighbour left"):
                await protector.protect(big, "2+1")
            assert [len(n[2].pieces()) for n in nodes] == before
            assert not os.path.exists(manifest_path(str(tmp_path / "owner"), big))
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_protect_needs_every_block_here(tmp_path):
    import contextlib
    from edge.ipld.cid import CID
    from edge.store import BlockNotFound
    owner = Identity.generate()
    with Store(str(tmp_path / "o")) as store, contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, [1 << 20] * 3, stack)
            protector = Protector(AsyncStore(store), owner, table(owner, nodes), str(tmp_path / "o"))
            with pytest.raises(BlockNotFound, match="does not hold block"):
                await protector.protect(CID.for_block(b"absent"), "auto")
            assert kept_manifests(str(tmp_path / "o")) == [] and all(n[2].pieces() == [] for n in nodes)
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_reader_rebuilds_the_pin_from_any_k_pieces(owner_store, tmp_path):
    """A reader that holds nothing gets the manifest from a holder and the blocks from any k verified pieces of
    each segment: with two of six holders away and one that sends damaged bytes (dropped and another asked when
    its piece comes before k others)."""
    import contextlib
    from edge.protection.reader import ReadFailed, Reader
    root = add_file(owner_store, tmp_path, 20 << 20)
    owner, reader_id = Identity.generate(), Identity.generate()
    with contextlib.ExitStack() as stack, Store(str(tmp_path / "reader")) as mine:
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, [64 << 20] * 6, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, nodes), str(tmp_path / "owner"))
            await protector.protect(root, "2+2")
            [man] = kept_manifests(str(tmp_path / "owner"))
            liar = man.holder_of(1, 0)   # damages every piece it holds (a data piece of segment 1 among them)
            liar_pieces = next(n[2] for n in nodes if n[0].node_id == liar)
            for held in liar_pieces.pieces():
                path = os.path.join(liar_pieces.dir, held.root.hex() + ".piece")
                with open(path, "r+b") as f:
                    f.write(b"\xff" * 64)
            away = set()   # two holders away, so long as no segment loses more than m pieces with the liar's
            for node in sorted(man.holders):
                lost = away | {liar, node}
                if len(away) < 2 and node != liar and all(
                        sum(man.holder_of(s, p) in lost for p in range(man.n)) <= man.m
                        for s in range(len(man.segments))):
                    away.add(node)
            assert away
            seen = [n for n in nodes if n[0].node_id not in away]
            reader = Reader(AsyncStore(mine), reader_id, table(reader_id, seen), str(tmp_path / "reader"))
            t0 = time.perf_counter()
            done = await reader.read(root)
            print(f"\nread 20 MiB back from pieces in {time.perf_counter() - t0:.2f} s: {done}")
            assert done["segments"] == len(man.segments) and done["pieces"] >= man.k * len(man.segments)
            original = tmp_path / "file"
            assert b"".join(content.cat(mine, str(root), 0, None)) == original.read_bytes()
            # the liar's pieces never pass: whether the read asked it before k others arrived or not (the rest
            # are cancelled), a piece from it fails its Merkle root
            from edge.transport.piececlient import PieceAnswerError
            ident, endpoint, _ = next(n for n in nodes if n[0].node_id == liar)
            async with open_client(reader_id, endpoint, liar) as c:
                with pytest.raises(PieceAnswerError, match="do not match the piece's root"):
                    await c.get_piece(man.segments[1].roots[0], man.piece_size(1))
            # with too few holders reachable, a clear refusal
            few = Reader(AsyncStore(mine), reader_id, table(reader_id, nodes[:1]), str(tmp_path / "reader"))
            with pytest.raises(ReadFailed):
                await few.read(root)
            nursery.cancel_scope.cancel()
