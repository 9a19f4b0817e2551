"""ListStreams on real sockets (loopback TCP, CURVE): a node gives its signed stream entries, page by page, only
after hello, and the asker's table keeps what the publisher signed."""

import pytest
import trio

from edge.discovery.streams import StreamTable, ask_streams
from edge.identity import Identity
from edge.ipld.cid import CID
from edge.store import Store
from edge.transport.client import PeerRefused, open_client
from edge.transport.server import Policy, serve_transport
from edge.wire import ListStreams
from edge.wire.streamentry import Segment, StreamEntry, TrackEntry, serialize_entry


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "a")) as s:
        yield s


def big_live(who: Identity, name: str) -> bytes:
    segs = tuple(Segment(i, 2_000_000, CID.for_block(bytes([i, len(name)])), 50_000) for i in range(30))
    tracks = tuple(TrackEntry(f"t{k}", "video", "avc1.64001f", 640, 360, 800, 30000, CID.for_block(b"i"), segs)
                   for k in range(3))
    return serialize_entry(StreamEntry(name, who.node_id, CID.for_block(b"i"), "live", tracks, 2000, 6), who)


@pytest.mark.trio
async def test_entries_come_page_by_page_and_are_checked(store):
    server_id, me = Identity.generate(), Identity.generate()
    entries = tuple((f"cam{i:02d}", big_live(server_id, f"cam{i:02d}")) for i in range(40))
    print(f"a live entry with 3 tracks × 30 segments: {len(entries[0][1])} bytes")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_transport, store, server_id, Policy(), "tcp://127.0.0.1:0")
        handle.server.streams = entries
        async with open_client(me, handle.endpoint, server_id.node_id) as client:
            assert "streams" in client.welcome.caps
            got = await ask_streams(client)
            assert got == [data for _, data in entries]   # more than one body's worth: several pages
            assert await ask_streams(client, "cam07") == [entries[7][1]]
            assert await ask_streams(client, "nosuch") == []
        table = StreamTable(me.node_id)
        assert table.offer(server_id.node_id, got) == 40 and len(table.entries()) == 40
        async with open_client(Identity.generate(), handle.endpoint, server_id.node_id, hello=False) as client:
            with pytest.raises(PeerRefused, match="refused"):
                await client.request(lambda rid: ListStreams(rid))
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_live_window_is_asked_of_its_publisher_and_kept_when_it_is_gone(store):
    from edge.discovery import streams as streams_mod
    from edge.discovery.peers import PeerInfo, PeerTable
    server_id, me = Identity.generate(), Identity.generate()
    peers = PeerTable(me.node_id, 60)
    entry = lambda seq: serialize_entry(StreamEntry(   # noqa: E731
        "cam", server_id.node_id, CID.for_block(b"i"), "live", seq=seq), server_id)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_transport, store, server_id, Policy(), "tcp://127.0.0.1:0")
        port = int(handle.endpoint.rsplit(":", 1)[1])
        peers.seen(PeerInfo(server_id.node_id, ["127.0.0.1"], port))
        hood = streams_mod.Neighbourhood(me, peers, lambda node: open_client(me, handle.endpoint, node, timeout=0.5))
        handle.server.streams = (("cam", entry(1)),)
        async with open_client(me, handle.endpoint, server_id.node_id) as client:
            await hood.heard(server_id.node_id, client)
        held = hood.pick("cam")
        assert held.seq == 1 and hood.pick("cam", server_id.node_id) == held and hood.pick("film") is None
        handle.server.streams = (("cam", entry(2)),)
        assert (await hood.fresh(held)).seq == 2
        handle.server.streams = (("cam", entry(3)),)
        assert (await hood.fresh(held)).seq == 2          # asked within FRESH_FOR: the answer just had
        nursery.cancel_scope.cancel()
    hood._asked_at.clear()
    # the publisher is gone: the window held is what there is, and the failure is counted
    assert (await hood.fresh(held)).seq == 2 and hood.stats()["failed"] == 1
    peers.gone(server_id.node_id)
    assert hood.entries() == [] and hood.pick("cam") is None   # its entries go with the neighbour
