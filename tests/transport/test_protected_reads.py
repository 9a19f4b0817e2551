"""A reader's protected read as the gateway uses it: segments stored one at a time (a waiting reader woken after
each), the segment holding the block a reader waits for first, the hashing and decoding off the Trio thread."""

import contextlib
import time

import pytest
import trio

from edge.identity import Identity
from edge.protection.owner import Protector, kept_manifests
from edge.protection.reader import Reader
from edge.store import Store, content
from edge.store.service import AsyncStore
from tests.transport.test_protection import add_file, holders, table


@pytest.mark.trio
async def test_segments_are_stored_one_by_one_the_wanted_one_first(tmp_path):
    with contextlib.ExitStack() as stack:
        owner_store = stack.enter_context(Store(str(tmp_path / "owner")))
        mine = stack.enter_context(Store(str(tmp_path / "reader")))
        root = add_file(owner_store, tmp_path, 20 << 20)   # three segments
        owner, reader_id = Identity.generate(), Identity.generate()
        async with trio.open_nursery() as nursery:
            nodes = await holders(nursery, tmp_path, [64 << 20] * 5, stack)
            await Protector(AsyncStore(owner_store), owner, table(owner, nodes), str(tmp_path / "owner")).protect(
                root, "2+2")
            [man] = kept_manifests(str(tmp_path / "owner"))
            assert len(man.segments) == 3
            from edge.ipld.cid import CID
            # a block of the last segment (its key list holds the keys, the owner's store the CIDs)
            want = next(c for c in content.walk_blocks(owner_store, root) if man.segment_of(c[0]) == [2])[0]
            assert isinstance(want, CID)
            stored, ticks = [], []

            def on_stored(stats):
                # what is in the store when each segment is reported: whole segments, the wanted one first
                stored.append((stats["stored"], mine.has(want), mine.has(root)))

            async def watch():   # the Trio thread stays free while pieces are hashed and segments decoded
                while True:
                    t = time.perf_counter()
                    await trio.sleep(0.01)
                    ticks.append(time.perf_counter() - t - 0.01)
            nursery.start_soon(watch)
            reader = Reader(AsyncStore(mine), reader_id, table(reader_id, nodes[1:]), str(tmp_path / "reader"))
            done = await reader.read(root, on_stored=on_stored, wanted=lambda: want)
            print(f"\nread 20 MiB in 3 segments with one holder away: {done}; the Trio thread's longest stall "
                  f"{max(ticks) * 1000:.1f} ms")
            assert len(stored) == 3
            assert stored[0][1] and not stored[0][2]   # the wanted segment first, the root's (segment 0) not yet
            assert stored[0][0] < stored[1][0] < stored[2][0] == (tmp_path / "file").stat().st_size + sum(
                len(d) for c, d in content.walk_blocks(owner_store, root) if c.codec != 0x55)
            assert b"".join(content.cat(mine, str(root), 0, None)) == (tmp_path / "file").read_bytes()
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_one_operator_never_holds_two_pieces_of_a_segment(tmp_path):
    """Three boxes of one operator (config operator, told in the Welcome) are one failure domain: never more
    than one piece of a segment among them, also when a piece is moved on because its first pick refused (two
    boxes lend too little). Three more boxes of their own: exactly the four domains 2+2 needs."""
    import functools

    from edge.store.pieces import PieceStore
    from edge.transport.accounting import Policy
    from edge.transport.client import open_client
    from edge.transport.server import serve_transport
    kinds = ["house"] * 3 + [""] * 3 + ["tiny-a", "tiny-b"]
    with contextlib.ExitStack() as stack:
        owner_store = stack.enter_context(Store(str(tmp_path / "owner")))
        root = add_file(owner_store, tmp_path, 20 << 20)
        async with trio.open_nursery() as nursery:
            nodes, operator_of = [], {}
            for i, op in enumerate(kinds):
                d = str(tmp_path / f"h{i}")
                store = stack.enter_context(Store(d))
                pieces = PieceStore(d, 1024 if op.startswith("tiny") else 64 << 20)
                stack.callback(pieces.close)
                ident = Identity.generate()
                handle = await nursery.start(functools.partial(serve_transport, store, ident, Policy(operator=op),
                                                               "tcp://127.0.0.1:0", pieces=pieces))
                nodes.append((ident, handle.endpoint, pieces))
                operator_of[ident.node_id] = op
            owner = Identity.generate()
            async with open_client(owner, nodes[0][1], nodes[0][0].node_id) as c:
                assert c.welcome.operator == "house"
            done = await Protector(AsyncStore(owner_store), owner, table(owner, nodes),
                                   str(tmp_path / "owner")).protect(root, "2+2")
            [man] = kept_manifests(str(tmp_path / "owner"))
            per_segment = [[operator_of[man.holder_of(s, p)] for p in range(man.n)] for s in range(len(man.segments))]
            print(f"\noperators of each segment's holders: {per_segment}; {done['pieces']} pieces")
            for ops in per_segment:
                assert ops.count("house") <= 1 and not any(o.startswith("tiny") for o in ops)
            nursery.cancel_scope.cancel()
