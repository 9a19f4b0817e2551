"""The neighbourhood stream table: only a publisher's own signed entries are kept, bounded, and they expire."""

from edge.identity import Identity
from edge.ipld.cid import CID
from edge.discovery.streams import OwnStreams, StreamTable, entry_of_row
from edge.wire.streamentry import StreamEntry, parse_entry, serialize_entry

HERE = Identity.from_seed(b"h" * 32)
A = Identity.from_seed(b"a" * 32)
B = Identity.from_seed(b"b" * 32)
ROOT = str(CID.for_block(b"dir", 0x70))


def entry(who: Identity, name: str = "film", seq: int = 1) -> bytes:
    return serialize_entry(StreamEntry(name, who.node_id, CID.for_block(name.encode(), 0x70), "vod", seq=seq), who)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def test_a_neighbour_cannot_inject_another_publishers_entry():
    table = StreamTable(HERE.node_id)
    # B hands on A's genuinely signed entry: B is not its publisher
    assert table.offer(B.node_id, [entry(A)]) == 0 and table.entries() == [] and table.refused == 1
    # B's own entry altered to name A: the signature is B's, so it is not A's entry either
    forged = entry(B).replace(B.node_id.encode(), A.node_id.encode())
    assert table.offer(B.node_id, [forged]) == 0 and table.refused == 2
    assert table.offer(A.node_id, [forged]) == 0 and table.refused == 3   # nor from A: A never signed it
    assert table.offer(A.node_id, [entry(A)]) == 1
    assert [e.publisher for e in table.entries()] == [A.node_id]


def test_same_name_two_publishers_both_kept_and_told_apart():
    table = StreamTable(HERE.node_id)
    table.offer(A.node_id, [entry(A, "film")])
    table.offer(B.node_id, [entry(B, "film"), entry(B, "talk")])
    assert sorted(e.publisher for e in table.find("film")) == sorted([A.node_id, B.node_id])
    assert [e.publisher for e in table.find("film", B.node_id)] == [B.node_id]
    assert table.find("talk", A.node_id) == [] and table.find("film", "not a node") == []


def test_older_entries_do_not_replace_newer_and_a_complete_list_drops_the_rest():
    table = StreamTable(HERE.node_id)
    table.offer(A.node_id, [entry(A, "film", seq=5), entry(A, "talk", seq=5)])
    table.offer(A.node_id, [entry(A, "film", seq=3)], complete=False)
    assert table.find("film")[0].seq == 5
    table.offer(A.node_id, [entry(A, "film", seq=6)])
    assert [e.name for e in table.entries()] == ["film"] and table.find("film")[0].seq == 6


def test_entries_expire_when_the_neighbour_leaves_or_is_silent():
    clock = Clock()
    table = StreamTable(HERE.node_id, ttl=60, clock=clock)
    table.offer(A.node_id, [entry(A)])
    table.offer(B.node_id, [entry(B)])
    table.expire(alive=lambda node: node != B.node_id)
    assert [e.publisher for e in table.entries()] == [A.node_id]
    clock.now += 61
    table.expire()
    assert table.entries() == []


def test_the_table_is_bounded():
    table = StreamTable(HERE.node_id, max_publishers=3)
    clock = Clock()
    table.clock = clock
    nodes = [Identity.from_seed(bytes([i]) * 32) for i in range(5)]
    for node in nodes:
        clock.now += 1
        table.offer(node.node_id, [entry(node)])
    assert len(table.publishers) == 3
    assert {e.publisher for e in table.entries()} == {n.node_id for n in nodes[2:]}
    # a node's own entries (heard back) are not listed as a neighbour's
    assert table.offer(HERE.node_id, [entry(HERE)]) == 0


def test_own_entries_are_signed_from_store_rows_and_resigned_only_on_change():
    own = OwnStreams(A)
    vod_row = {"name": "film", "cid": ROOT, "kind": "stream", "updated": 1700000000.5,
               "meta": {"kind": "vod", "duration": 4.96, "tracks": [
                   {"name": "240p", "kind": "video", "codec": "avc1.64000d", "width": 426, "height": 240,
                    "kbps": 400, "segments": 5}]}}
    seg = str(CID.for_block(b"s"))
    live_row = {"name": "cam", "cid": seg, "kind": "stream", "updated": 1700000001,
                "meta": {"kind": "live", "segment_seconds": 1.0, "window": 4, "ended": False, "tracks": [
                    {"name": "240p", "kind": "video", "codec": "avc1", "width": 426, "height": 240, "kbps": 400,
                     "frame_rate": 30.0, "init": seg, "segments": [
                         {"index": 3, "duration": 1.0, "cid": seg, "bytes": 9, "cut": 1.5}]}]}}
    first = own.update([vod_row, live_row])
    again = own.update([vod_row, live_row])
    assert first == again   # nothing changed: the same signed bytes
    entries = {name: parse_entry(data) for name, data in first}
    assert entries["film"].duration == 4960 and entries["film"].tracks[0].height == 240
    assert entries["cam"].live and entries["cam"].tracks[0].segments[0].index == 3
    assert entries["cam"].tracks[0].fps == 30000
    live_row["meta"]["tracks"][0]["segments"].append({"index": 4, "duration": 1.0, "cid": seg, "bytes": 9})
    third = dict(own.update([vod_row, live_row]))
    assert third["film"] == dict(first)["film"] and parse_entry(third["cam"]).seq > entries["cam"].seq
    assert entry_of_row(vod_row, A.node_id, 1).root == CID.for_block(b"dir", 0x70)


def test_entries_heard_again_are_not_checked_again():
    table = StreamTable(HERE.node_id)
    raw = entry(A)
    table.offer(A.node_id, [raw])
    held = table.find("film")[0]
    fresh, refused = table.check(A.node_id, [raw], table.known(A.node_id))
    assert fresh["film"][0] is held and refused == 0   # the same bytes: the entry checked before
    # bytes this publisher never gave are checked (and B's bytes are B's only)
    assert table.check(A.node_id, [entry(B)], table.known(A.node_id)) == ({}, 1)


def test_a_long_live_window_is_cut_to_fit_one_entry():
    seg = str(CID.for_block(b"s"))
    tracks = [{"name": f"t{k}", "kind": "video", "codec": "avc1.64001f", "width": 1920, "height": 1080,
               "kbps": 5000, "frame_rate": 30.0, "init": seg,
               "segments": [{"index": i, "duration": 2.0, "cid": str(CID.for_block(bytes([i, k]))), "bytes": 9}
                            for i in range(100)]} for k in range(6)]
    row = {"name": "cam", "cid": seg, "updated": 1, "meta": {"kind": "live", "segment_seconds": 2, "window": 90,
                                                            "tracks": tracks}}
    (name, data), = OwnStreams(A).update([row])
    got = parse_entry(data)
    kept = len(got.tracks[0].segments)
    assert 2 <= kept < 32 and got.tracks[0].segments[-1].index == 99
    print(f"a 6-track live window: the newest {kept} segments of each fit in {len(data)} bytes")


def test_a_live_window_spans_at_most_max_epochs_encoders():
    from edge.wire.streamentry import MAX_EPOCHS
    inits = [str(CID.for_block(b"init-%d" % n)) for n in range(MAX_EPOCHS + 2)]
    segs = [{"index": i, "duration": 1.0, "cid": str(CID.for_block(bytes([i]))), "bytes": 9,
             **({"epoch": i // 2, "init": inits[i // 2]} if i // 2 else {})} for i in range(2 * len(inits))]
    row = {"name": "cam", "cid": inits[0], "updated": 1,
           "meta": {"kind": "live", "segment_seconds": 1, "window": 12, "tracks": [
               {"name": "v", "kind": "video", "codec": "avc1.64001f", "init": inits[-1], "first_init": inits[0],
                "segments": segs}]}}
    (name, data), = OwnStreams(A).update([row])
    track = parse_entry(data).tracks[0]
    assert [e.number for e in track.epochs] == list(range(2, 2 + MAX_EPOCHS))          # the newest ones
    assert track.segments[0].index == 4 and [str(e.init) for e in track.epochs] == inits[2:]
    row["meta"]["tracks"][0]["segments"] = segs[:2]                                     # no switch in the window
    (name, data), = OwnStreams(A).update([row])
    assert parse_entry(data).tracks[0].epochs == () and b"epochs" not in data
