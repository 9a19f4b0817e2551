"""Repair orders (edge/protect/order.py): signed, canonical, bounded; who may order is the checker's word."""

import pytest
from hypothesis import given, settings

from edge.errors import DecodeError
from edge.identity import Identity
from edge.ipld.cid import CID
from edge.protect import order as orders
from tests.ipld.test_formats import clean, mutations

PIN = CID.for_block(b"a pin")
OWNER, HOLDER, OTHER = Identity.generate(), Identity.generate(), Identity.generate()
ORDER = orders.sign(orders.Order(PIN, 3, 1, HOLDER.node_id, 7, 2_000_000_000), OWNER)
RAW = orders.serialize(ORDER)


def test_round_trip_and_size():
    assert orders.parse(RAW) == ORDER and len(RAW) <= orders.MAX_ORDER
    print(f"\na repair order is {len(RAW)} bytes")


def test_check_says_why():
    signers = {OWNER.node_id}
    ok = orders.check(ORDER, str(PIN), 3, HOLDER.node_id, signers, 1_900_000_000)
    assert ok == ""
    assert "another segment" in orders.check(ORDER, str(PIN), 2, HOLDER.node_id, signers, 0)
    assert "names another node" in orders.check(ORDER, str(PIN), 3, OTHER.node_id, signers, 0)
    assert "expired" in orders.check(ORDER, str(PIN), 3, HOLDER.node_id, signers, 2_000_000_000)
    assert "not signed by" in orders.check(ORDER, str(PIN), 3, HOLDER.node_id, {OTHER.node_id}, 0)
    own = orders.sign(orders.Order(PIN, 3, 1, HOLDER.node_id, 7, 2_000_000_000), HOLDER)   # a holder's own order
    assert "not signed by" in orders.check(own, str(PIN), 3, HOLDER.node_id, {HOLDER.node_id, OWNER.node_id}, 0)


def test_a_changed_or_oversized_order_is_refused():
    forged = orders.serialize(orders.Order(PIN, 3, 1, OTHER.node_id, 7, 2_000_000_000, OWNER.node_id, ORDER.sig))
    with pytest.raises(DecodeError, match="not signed by its signer"):
        orders.parse(forged)
    with pytest.raises(DecodeError, match="1 to 512 bytes"):
        orders.parse(b"x" * 513)


@given(mutations(RAW))
@settings(max_examples=400)
def test_mutated_orders(raw):
    clean(orders.parse, raw)
