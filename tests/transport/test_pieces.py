"""Pieces over the real transport (loopback TCP, CURVE, a real Store and PieceStore on disk): an owner stores
pieces, a reader reads them back checked, an auditor audits, a leaving holder transfers one, leases end; each
kind of bad input gets its typed refusal and the holder keeps nothing it should not."""

import functools
import os
import random
import time

import pytest
import trio
import zmq

from edge.identity import Identity
from edge.ipld.cid import CID
from edge.protect import audit, merkle
from edge.store import Store
from edge.store.pieces import PieceStore
from edge.transport.client import PeerRefused, open_client
from edge.transport.server import Policy, serve_transport
from edge.transport.zmqtrio import TrioSocket
from edge.wire import ErrorCode, StorePiece, parse_message, serialize_message
from edge.wire.messages import MAX_PIECE_CHUNK
from tests.transport.helpers import raw_dealer

PIN = CID.for_block(b"a protected file")


def piece(n, seed=1):
    return random.Random(seed).randbytes(n)


@pytest.fixture
def holder(tmp_path):
    with Store(str(tmp_path / "h")) as store:
        pieces = PieceStore(str(tmp_path / "h"), 3 << 20)
        yield store, pieces
        pieces.close()


async def start(nursery, holder, identity, policy=None):
    store, pieces = holder
    handle = await nursery.start(functools.partial(serve_transport, store, identity, policy or Policy(),
                                                   "tcp://127.0.0.1:0", pieces=pieces))
    return handle, handle.endpoint


def lease():
    return int(time.time()) + 86400


@pytest.mark.trio
async def test_store_read_audit_and_release(holder):
    _, pieces = holder
    data = piece(2_500_000)   # three chunks
    root = merkle.build(data).root
    holder_id, owner, reader = Identity.generate(), Identity.generate(), Identity.generate()
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, holder, holder_id)
        async with open_client(owner, endpoint, holder_id.node_id) as c:
            assert "pieces" in c.welcome.caps
            t0 = time.perf_counter()
            assert await c.store_piece(PIN, 0, 3, data, lease()) == b""
            print(f"\nstored a {len(data)}-byte piece in {time.perf_counter() - t0:.3f} s")
            await c.put_manifest(PIN, b"a signed manifest")
        assert pieces.held(root).owner == owner.node_id and pieces.held(root).index == 3
        async with open_client(reader, endpoint, holder_id.node_id) as r:
            assert await r.get_piece(root, len(data)) == data
            assert await r.get_piece_range(root, 1000, 10) == (data[1000:1010], len(data))
            assert await r.get_manifest(PIN) == b"a signed manifest"
            secret, nxt = audit.new_secret(), audit.new_secret()
            nonce = audit.new_nonce()
            t0 = time.perf_counter()
            proof = await r.audit(root, nonce, secret, audit.commitment(nxt))
            print(f"audit round trip {1000 * (time.perf_counter() - t0):.1f} ms, proof "
                  f"{len(audit.serialize_proof(proof))} bytes")
            beacon = audit.open_beacon(secret, audit.commitment(secret))
            indices = audit.challenge(beacon, reader.public_key, root, nonce,
                                      merkle.leaf_count(len(data)))
            assert audit.check(root, len(data), indices, proof, holder_id.public_key, nonce=nonce)
            # the next epoch's secret must open the commitment given with the last one
            with pytest.raises(PeerRefused) as err:
                await r.audit(root, audit.new_nonce(), audit.new_secret(), audit.commitment(nxt))
            assert err.value.code == ErrorCode.REFUSED
            assert await r.audit(root, audit.new_nonce(), nxt, audit.commitment(audit.new_secret()))
            assert await r.release_pieces([root]) == (False,)   # only the owner releases
        async with open_client(owner, endpoint, holder_id.node_id) as c:
            assert await c.renew_leases([root, bytes(32)], lease() + 3600) == (True, False)
            assert await c.release_pieces([root]) == (True,)
        assert pieces.held(root) is None and pieces.used() == 0
        stats = server.stats()
        assert stats["pieces_stored"] == 1 and stats["audits_answered"] == 2 and stats["pieces_served"] >= 3
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_bad_pieces_are_refused_and_nothing_is_kept(holder, tmp_path):
    _, pieces = holder
    holder_id, owner = Identity.generate(), Identity.generate()
    data = piece(300_000)
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, holder, holder_id)
        async with open_client(owner, endpoint, holder_id.node_id) as c:
            with pytest.raises(PeerRefused) as err:    # a wrong root: checked once whole, and dropped
                await c.store_piece(PIN, 0, 0, data, lease(), root=merkle.build(b"other").root)
            assert err.value.code == ErrorCode.BAD_REQUEST and "do not hash to its root" in str(err.value)
            with pytest.raises(PeerRefused) as err:    # a chunk out of order (a truncated upload resumed wrongly)
                await c.request(lambda rid: StorePiece(rid, PIN, 0, 0, bytes(32), 1000, lease(), 500, b"x" * 10))
            assert err.value.code == ErrorCode.BAD_REQUEST and "start at offset 0" in str(err.value)
            with pytest.raises(PeerRefused) as err:    # a lease already past
                await c.store_piece(PIN, 0, 0, data, int(time.time()) - 1)
            assert err.value.code == ErrorCode.BAD_REQUEST and "expired" in str(err.value)
            await c.store_piece(PIN, 0, 0, piece(2_000_000, 2), lease())
            with pytest.raises(PeerRefused) as err:    # past the 3 MiB share: FULL
                await c.store_piece(PIN, 0, 1, piece(2_000_000, 3), lease())
            assert err.value.code == ErrorCode.FULL and "does not fit" in str(err.value)
            with pytest.raises(PeerRefused) as err:
                await c.get_piece(bytes(32), 10)
            assert err.value.code == ErrorCode.NOT_FOUND
            with pytest.raises(PeerRefused) as err:
                await c.audit(bytes(32), audit.new_nonce(), audit.new_secret(), bytes(32))
            assert err.value.code == ErrorCode.NOT_FOUND
        assert [h.size for h in pieces.pieces()] == [2_000_000]
        assert sorted(n for n in os.listdir(pieces.dir) if "sqlite" not in n) == \
            [pieces.pieces()[0].root.hex() + ".piece"]
        # an oversized message: a chunk over 1 MiB is a bad request, read no further
        ctx = zmq.Context()
        raw = raw_dealer(ctx, owner, holder_id)
        raw.connect(endpoint)
        sock = TrioSocket(raw)
        frames = serialize_message(StorePiece(1, PIN, 0, 0, bytes(32), 4 << 20, lease(), 0, b"x" * MAX_PIECE_CHUNK))
        frames[2] = frames[2] + b"x"
        await sock.send_multipart(frames)
        with trio.fail_after(5):
            reply = parse_message(await sock.recv_multipart())
        assert reply.code == ErrorCode.BAD_REQUEST and "over the 1048576-byte limit" in reply.message
        sock.close()
        ctx.term()
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_transfer_is_receipted_and_a_node_without_share_refuses(tmp_path, holder):
    holder_id, leaving, owner = Identity.generate(), Identity.generate(), Identity.generate()
    data = piece(100_000)
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, holder, holder_id)
        async with open_client(leaving, endpoint, holder_id.node_id) as c:
            sig = await c.store_piece(PIN, 1, 2, data, lease(), owner=owner.node_id)
            assert len(sig) == 64
        held = holder[1].held(merkle.build(data).root)
        assert held.owner == owner.node_id   # the lease is the owner's, not the leaving holder's
        async with open_client(owner, endpoint, holder_id.node_id) as c:
            assert await c.renew_leases([held.root], lease()) == (True,)
        with Store(str(tmp_path / "z")) as store:
            none, lender = PieceStore(str(tmp_path / "z"), 0), Identity.generate()
            try:
                _, other = await start(nursery, (store, none), lender)
                async with open_client(owner, other, lender.node_id) as c:
                    assert "pieces" not in c.welcome.caps
                    with pytest.raises(PeerRefused) as err:
                        await c.store_piece(PIN, 0, 0, data, lease())
                    assert err.value.code == ErrorCode.REFUSED and "share = 0" in str(err.value)
            finally:
                none.close()
        nursery.cancel_scope.cancel()
