"""What a follower takes from the live fan-out (edge/media/fanout.py): a segment only when its bytes give its CID,
a window only when its publisher signed it (not a relay, not another publisher), a heartbeat only when signed;
nothing else is kept or relayed. The checks run on the frames as they come off the SUB socket."""

import trio

from edge.discovery.peers import PeerTable
from edge.identity import Identity
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.media.fanout import Fanout
from edge.media.following import Subscription, heartbeat_body, topic_of
from edge.store.content import bytes_dag
from edge.wire.streamentry import Epoch, Segment, StreamEntry, TrackEntry, serialize_entry

A = Identity.from_seed(b"a" * 32)        # the publisher
R = Identity.from_seed(b"r" * 32)        # a relay (or anyone else)
HERE = Identity.from_seed(b"h" * 32)


def window(who: Identity, cids, name: str = "cam", seq: int = 1) -> bytes:
    track = TrackEntry("240p", "video", "avc1.42c01e", 426, 240, 400, 30000, cids[0],
                       tuple(Segment(i, 1_000_000, c, 100) for i, c in enumerate(cids[1:])))
    entry = StreamEntry(name, who.node_id, CID.for_block(b"root", 0x70), "live", (track,), 1000, 6,
                        seq=seq)
    return serialize_entry(entry, who)


def follower() -> tuple[Fanout, Subscription]:
    fan = Fanout(HERE, PeerTable(HERE.node_id, 30), connect=None)
    return fan, Subscription(A.node_id, "cam", topic_of(A.node_id, "cam"), 0.0)


def frames_of(cid, data: bytes):
    return [topic_of(A.node_id, "cam"), b"S", bytes(cid), cbor.dumps({"cut": 1}), data]


def test_a_segment_is_kept_only_when_its_bytes_give_its_cid():
    fan, sub = follower()
    big = bytes(range(256)) * 4000                     # over one chunk: a DAG-PB root over raw leaves
    small = b"moof" * 100
    for data in (big, small):
        cid = bytes_dag(data)[0].cid
        assert fan._segment(sub, frames_of(cid, data)) and sub.data[cid] == data
    cid = bytes_dag(small)[0].cid
    assert not fan._segment(sub, frames_of(cid, small + b"!"))             # altered on the way
    assert not fan._segment(sub, frames_of(cid, small)[:2] + [b"\xff", b"", small])   # not a CID


def test_a_window_is_taken_only_from_its_publisher_and_only_newer():
    fan, sub = follower()
    init, seg = (bytes_dag(x)[0].cid for x in (b"init", b"seg"))
    forged = window(R, [init, seg]).replace(R.node_id.encode(), A.node_id.encode())
    assert not fan._entry(sub, forged)                                        # signed by someone else
    assert not fan._entry(sub, window(R, [init, seg]))                        # another publisher's stream
    assert not fan._entry(sub, window(A, [init, seg], name="other"))          # another stream of A's
    assert not fan._entry(sub, window(A, [init, seg])[:-1] + b"\0")           # a broken signature
    assert sub.entry is None
    assert fan._entry(sub, window(A, [init, seg], seq=5)) and sub.entry.seq == 5
    assert fan._entry(sub, window(A, [init], seq=4)) and sub.entry.seq == 5   # an older one: not taken


def test_a_segment_becomes_playable_when_a_signed_window_lists_it():
    fan, sub = follower()
    init, seg = (bytes_dag(x)[0].cid for x in (b"init", b"seg"))
    fan._segment(sub, frames_of(init, b"init"))
    fan._segment(sub, frames_of(seg, b"seg"))
    assert fan.latencies == []
    fan._entry(sub, window(A, [init, seg]))
    assert len(fan.latencies) == 1 and fan._missing(sub) == []     # the media segment (not the init segment)
    fan._entry(sub, window(A, [init, seg], seq=2))                    # listed again: counted once
    assert len(fan.latencies) == 1


def test_each_epochs_init_of_a_switched_window_is_asked_for_and_kept():
    fan, sub = follower()
    old, new, s0, s1 = (bytes_dag(x)[0].cid for x in (b"init", b"init-1", b"seg0", b"seg1"))
    track = TrackEntry("240p", "video", "avc1.42c01e", 426, 240, 400, 30000, new,
                       (Segment(0, 1_000_000, s0, 100), Segment(1, 1_000_000, s1, 100)),
                       (Epoch(0, 0, old), Epoch(1, 1, new)))
    raw = serialize_entry(StreamEntry("cam", A.node_id, old, "live", (track,), 1000, 6, seq=3), A)
    for cid, data in ((old, b"init"), (new, b"init-1")):
        assert fan._segment(sub, frames_of(cid, data))
    assert fan._entry(sub, raw) and sub.entry.tracks[0].epochs[1].init == new
    assert set(fan._missing(sub)) == {s0, s1}                    # both inits held: not dropped, not asked again
    assert sub.data[old] == b"init" and sub.data[new] == b"init-1"


def test_heartbeats_must_carry_the_publishers_signature():
    fan, sub = follower()
    body = heartbeat_body(A.node_id, "cam", 1)
    assert fan._heartbeat(sub, body, A.sign(body))
    assert not fan._heartbeat(sub, body, R.sign(body))
    other = heartbeat_body(A.node_id, "other", 1)
    assert not fan._heartbeat(sub, other, A.sign(other))


def test_a_frame_that_fails_its_check_is_counted_and_not_relayed():
    fan, sub = follower()
    sent = []
    fan._send = sent.append
    fan._listening[sub.topic] = 1                       # someone follows the stream through this node
    cid = bytes_dag(b"seg")[0].cid

    async def main():
        async with trio.open_nursery() as nursery:
            fan._nursery = nursery
            await fan._take(sub, frames_of(cid, b"forged"))
            await fan._take(sub, [b"Lother", b"S"])
            await fan._take(sub, frames_of(cid, b"seg"))
    trio.run(main)
    assert fan.refused == 2 and len(sent) == 1 and sent[0][4] == b"seg"


def test_what_a_followed_stream_keeps_in_memory_is_bounded(monkeypatch):
    import edge.media.following as following
    monkeypatch.setattr(following, "MAX_HELD", 10_000)
    fan, sub = follower()
    for i in range(20):                                  # self-consistent segments no window lists
        data = bytes([i]) * 1000
        assert fan._segment(sub, frames_of(bytes_dag(data)[0].cid, data))
    assert sum(len(d) for d in sub.data.values()) <= 10_000 and len(sub.data) == 10
    assert bytes([19]) * 1000 in sub.data.values()       # the newest kept
