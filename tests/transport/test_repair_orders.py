"""Repair orders over the real transport (issue 16): a new holder computes a lost piece only on an order it can
check, fetching k pieces itself; a co-holder reads a sibling piece only with an order naming it, or whole once a
day (edge/transport/pieces.py, edge/protection/newholder.py)."""

import contextlib
import time

import pytest
import trio

from edge.identity import Identity
from edge.protect import manifest as manifests
from edge.protect import order as orders
from edge.protection.owner import Protector, kept_manifests
from edge.store import Store
from edge.store.service import AsyncStore
from edge.transport.client import PeerRefused, open_client
from edge.transport.piececlient import PieceAnswerError
from edge.wire import ErrorCode
from tests.transport.test_protection import add_file, table
from tests.transport.test_repair import holders


def _order(man, piece, holder, signer, expires=None):
    return orders.serialize(orders.sign(orders.Order(man.root, 0, piece, holder, man.version,
                                                     expires or int(time.time()) + orders.LIFETIME), signer))


@pytest.mark.trio
async def test_a_new_holder_checks_its_order_and_a_co_holder_needs_one(tmp_path):
    owner = Identity.generate()
    with Store(str(tmp_path / "owner")) as owner_store, contextlib.ExitStack() as stack:
        root = add_file(owner_store, tmp_path, 2 << 20)
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, 5, stack)
            protector = Protector(AsyncStore(owner_store), owner, table(owner, [n[:3] for n in nodes]),
                                  str(tmp_path / "owner"))
            await protector.protect(root, "2+2")
            [man] = kept_manifests(str(tmp_path / "owner"))
            by_node = {n[0].node_id: n for n in nodes}
            spare = next(n for n in nodes if n[0].node_id not in man.holders)
            raw, size, seg = manifests.serialize(man), man.piece_size(0), man.segments[0]
            sources = [(man.holder_of(0, q), by_node[man.holder_of(0, q)][1]) for q in range(1, man.n)]
            stranger = Identity.generate()
            async with open_client(owner, spare[1], spare[0].node_id) as c:
                for bad, words in ((_order(man, 0, spare[0].node_id, stranger), "not yours"),
                                   (_order(man, 0, man.holder_of(0, 1), owner), "not yours"),
                                   (_order(man, 1, spare[0].node_id, owner), "not yours"),
                                   (_order(man, 0, spare[0].node_id, owner, expires=1), "expired")):
                    with pytest.raises(PeerRefused, match=words):
                        await c.repair_piece(root, 0, 0, bad, sources, raw, seg.roots[0], owner.node_id)
                assert spare[2].held(seg.roots[0]) is None   # nothing fetched, nothing kept
                fetched = await c.repair_piece(root, 0, 0, _order(man, 0, spare[0].node_id, owner), sources, raw,
                                               seg.roots[0], owner.node_id)
            assert fetched == man.k * size and spare[2].held(seg.roots[0]).owner == owner.node_id
            async with open_client(stranger, spare[1], spare[0].node_id) as c:   # a stranger's order
                with pytest.raises(PeerRefused, match="only the pin's owner"):
                    await c.repair_piece(root, 0, 0, _order(man, 0, spare[0].node_id, stranger), sources, raw,
                                         seg.roots[0], stranger.node_id)
            with pytest.raises(PieceAnswerError):   # a receipt for another lease owner does not verify
                async with open_client(owner, spare[1], spare[0].node_id) as c:
                    await c.repair_piece(root, 0, 0, _order(man, 0, spare[0].node_id, owner), sources, raw,
                                         seg.roots[0], stranger.node_id)

            # a co-holder (the holder of piece 1) reading piece 2: ranges refused, an order of the owner's naming
            # it opens them; its own order does not; a whole read once, then refused until the next day
            co, sib = by_node[man.holder_of(0, 1)], by_node[man.holder_of(0, 2)]
            async with open_client(co[0], sib[1], sib[0].node_id) as c:
                with pytest.raises(PeerRefused) as refused:
                    await c.get_piece_range(seg.roots[2], 16384, 16384)
                assert refused.value.code == ErrorCode.SIBLING
                for own in (_order(man, 1, co[0].node_id, co[0]), _order(man, 1, co[0].node_id, owner, expires=1)):
                    with pytest.raises(PeerRefused, match="not signed by|expired"):
                        await c.get_piece_range(seg.roots[2], 16384, 16384, own)
                data, _ = await c.get_piece_range(seg.roots[2], 16384, 16384, _order(man, 1, co[0].node_id, owner))
                assert len(data) == 16384
                assert len(await c.get_piece(seg.roots[2], size)) == size   # the day's whole read
                with pytest.raises(PeerRefused, match="once a day"):
                    await c.get_piece(seg.roots[2], size)
            nursery.cancel_scope.cancel()
