"""Stream entries: signed by their publisher, one encoding, bounded; anything else refused with EntryError."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.identity import Identity
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.wire.streamentry import (MAX_ENTRY, MAX_SEGMENTS, EntryError, Segment, StreamEntry, TrackEntry, parse_entry,
                                   serialize_entry)
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


@given(st.sampled_from([serialize_entry(vod(), ME), serialize_entry(live(3), ME)]).flatmap(mutations))
@settings(max_examples=300)
def test_mutated_entries_give_entry_errors_only(data):
    clean(parse_entry, data)
