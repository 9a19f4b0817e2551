"""Stream entries: signed by their publisher, one encoding, bounded; anything else refused with EntryError."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.identity import Identity
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.wire.streamentry import (MAX_ENTRY, MAX_EPOCHS, MAX_SEGMENTS, Epoch, EntryError, Segment, StreamEntry,
                                   TrackEntry, parse_entry, serialize_entry, signed_size)
from tests.ipld.test_formats import clean, mutations

ME = Identity.from_seed(b"p" * 32)
OTHER = Identity.from_seed(b"q" * 32)
ROOT = CID.for_block(b"stream directory", 0x70)


def vod(**kw) -> StreamEntry:
    tracks = (TrackEntry("720p", "video", "avc1.64001f", 1280, 720, 2800, 30000),
              TrackEntry("audio", "audio", "mp4a.40.2", kbps=128))
    return StreamEntry(**{"name": "film", "publisher": ME.node_id, "root": ROOT, "kind": "vod", "tracks": tracks,
                          "seconds": 2000, "duration": 10_000, "updated": 1_700_000_000, "seq": 5, **kw})


def live(n: int = 8) -> StreamEntry:
    segs = tuple(Segment(i, 2_000_000, CID.for_block(bytes([i])), 40_000) for i in range(n))
    track = TrackEntry("360p", "video", "avc1.64001e", 640, 360, 800, 30000, CID.for_block(b"init"), segs)
    return StreamEntry("cam", ME.node_id, CID.for_block(b"init"), "live", (track,), seconds=2000, window=6,
                       updated=1_700_000_000, seq=9)


def switched(n: int = 8, at: int = 5, first: int = 0) -> StreamEntry:
    """live(n) whose encoder was replaced at segment at: two epochs, each with its own init."""
    entry = live(n)
    track = entry.tracks[0]
    epochs = (Epoch(first, 0, CID.for_block(b"init")), Epoch(at, 1, CID.for_block(b"init-1")))
    track = TrackEntry(**{**track.__dict__, "init": CID.for_block(b"init-1"), "epochs": epochs})
    return StreamEntry(**{**entry.__dict__, "tracks": (track,)})


def test_round_trip_vod_and_live():
    for entry in (vod(), live()):
        assert parse_entry(serialize_entry(entry, ME)) == entry


def test_a_node_signs_only_its_own_streams():
    with pytest.raises(EntryError, match="only entries of streams it publishes"):
        serialize_entry(vod(), OTHER)


def test_forged_entries_are_refused():
    data = serialize_entry(vod(), ME)
    value = cbor.loads(data)
    # another publisher's name on my signature
    with pytest.raises(EntryError, match="not signed by the publisher"):
        parse_entry(cbor.dumps({**value, "publisher": OTHER.node_id}))
    # my entry with its root changed
    with pytest.raises(EntryError, match="not signed by the publisher"):
        parse_entry(cbor.dumps({**value, "root": bytes(CID.for_block(b"evil", 0x70))}))
    # signed by someone else, naming me
    body = {k: v for k, v in value.items() if k != "sig"}
    with pytest.raises(EntryError, match="not signed by the publisher"):
        parse_entry(cbor.dumps({**body, "sig": OTHER.sign(b"hearth-stream\0" + cbor.dumps(body))}))
    # a fleet record's prefix does not make a stream entry
    with pytest.raises(EntryError, match="not signed by the publisher"):
        parse_entry(cbor.dumps({**body, "sig": ME.sign(b"hearth-presence\0" + cbor.dumps(body))}))


def test_oversized_entries_are_refused():
    with pytest.raises(EntryError, match="at most"):
        parse_entry(b"\xa0" * (MAX_ENTRY + 1))
    with pytest.raises(EntryError, match=f"at most {MAX_SEGMENTS} segments"):
        serialize_entry(live(MAX_SEGMENTS + 1), ME)
    with pytest.raises(EntryError):
        serialize_entry(vod(name="x" * 65), ME)
    with pytest.raises(EntryError, match="kind"):
        serialize_entry(vod(kind="radio"), ME)


def test_extra_or_missing_keys_are_refused():
    value = cbor.loads(serialize_entry(vod(), ME))
    with pytest.raises(EntryError, match="exactly the keys"):
        parse_entry(cbor.dumps({**value, "more": 1}))
    with pytest.raises(EntryError, match="exactly the keys"):
        parse_entry(cbor.dumps({k: v for k, v in value.items() if k != "seq"}))


def test_a_window_across_a_switch_of_encoder_round_trips_with_its_epochs():
    entry = switched()
    back = parse_entry(serialize_entry(entry, ME))
    assert back == entry
    track = back.tracks[0]
    assert [track.epoch_of(i).number for i in range(8)] == [0] * 5 + [1] * 3
    assert track.inits == [CID.for_block(b"init-1"), CID.for_block(b"init")]
    cost = signed_size(entry) - signed_size(live())
    print(f"two epochs cost {cost} bytes of the entry ({signed_size(entry)} of {MAX_ENTRY})")
    assert cost < 120


def test_an_entry_without_epochs_is_one_epoch_and_encoded_as_before():
    data = serialize_entry(live(), ME)
    assert b"epochs" not in data                     # what older nodes take, byte for byte
    track = parse_entry(data).tracks[0]
    assert track.epochs == () and track.epoch_of(3) is None and track.inits == [CID.for_block(b"init")]


def test_malformed_epoch_lists_are_refused():
    value = cbor.loads(serialize_entry(switched(), ME))
    init = bytes(CID.for_block(b"init"))

    def with_epochs(epochs):
        body = {k: v for k, v in value.items() if k != "sig"}
        body["tracks"] = [{**body["tracks"][0], "epochs": epochs}]
        return cbor.dumps({**body, "sig": ME.sign(b"hearth-stream\0" + cbor.dumps(body))})

    for epochs, message in [
            ([], "1 to 4 epochs"), ("x", "1 to 4 epochs"),
            ([[i, i, init] for i in range(MAX_EPOCHS + 1)], "1 to 4 epochs"),
            ([[0, 0]], r"an epoch is \[first segment index, epoch number, init CID\]"),
            ([[0, -1, init]], "epoch number must be a whole number"),
            ([[0, 0, b"not a cid"]], "epoch's init"),
            ([[0, 1, init], [5, 1, init]], "go up in both"),
            ([[0, 0, init], [5, 2, init], [3, 3, init]], "go up in both"),
            ([[1, 0, init]], "the first at its first"),
            ([[0, 0, init], [99, 1, init]], "each epoch starts at a segment of the window")]:
        with pytest.raises(EntryError, match=message):
            parse_entry(with_epochs(epochs))
    assert parse_entry(with_epochs([[0, 3, init]])).tracks[0].epoch_of(7).number == 3   # a window of one later epoch


@given(st.sampled_from([serialize_entry(vod(), ME), serialize_entry(live(3), ME),
                        serialize_entry(switched(6, 4), ME)]).flatmap(mutations))
@settings(max_examples=300)
def test_mutated_entries_give_entry_errors_only(data):
    clean(parse_entry, data)
