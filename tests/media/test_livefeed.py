"""The requester's feed of an RTMP push cut on a neighbour (edge/media/livefeed.py): a worker starts with the FLV
header, the metadata and the sequence headers, then the tags from the latest keyframe; one that falls too far
behind is dropped and the next starts at the latest keyframe, the memory kept bounded. For spot checks, a ring of
the last RING_BYTES (always from a keyframe) gives the span of the push a worker's output segment came from."""

import pytest

from edge.media.livefeed import END_SLACK_MS, Behind, FlvFeed, FlvRing, chunks
from edge.media.rtmpgate import _flv_tag
from edge.wire.jobs import MAX_FEED

HEADER = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
META = _flv_tag(18, 0, b"\x02\x00\x0aonMetaData")
AVC = _flv_tag(9, 0, b"\x17\x00\x00\x00\x00config")
AAC = _flv_tag(8, 0, b"\xaf\x00\x12\x10")


def key(ts):
    return _flv_tag(9, ts, b"\x17\x01\x00\x00\x00" + b"K" * 100)


def inter(ts):
    return _flv_tag(9, ts, b"\x27\x01\x00\x00\x00" + b"P" * 100)


def audio(ts):
    return _flv_tag(8, ts, b"\xaf\x01" + b"A" * 20)


def pushed(feed, tags):
    for t in [HEADER, META, AVC, AAC, *tags]:
        feed.write(t)


def test_a_worker_starts_at_the_latest_keyframe_with_the_configuration():
    feed = FlvFeed()
    pushed(feed, [key(0), inter(40), audio(40), key(80), inter(120)])
    assert feed.start() == HEADER + META + AVC + AAC
    data, end = feed.take(MAX_FEED, 0.1)
    assert data == key(80) + inter(120) and not end
    feed.write(audio(130))
    feed.end("the publisher hung up")
    assert feed.take(MAX_FEED, 0.1) == (audio(130), True)
    assert feed.take(MAX_FEED, 0.1) == (b"", True)


def test_only_the_last_gop_is_kept_between_workers_and_a_replacement_starts_there():
    feed = FlvFeed()
    pushed(feed, [key(0), inter(40)])
    feed.start()
    assert feed.take(MAX_FEED, 0.1)[0] == key(0) + inter(40)
    feed.stop()                                   # the worker died
    for t in (inter(80), key(120), inter(160)):
        feed.write(t)
    assert feed.first == 3 and len(feed.tags) == 2, "the GOP before the latest keyframe is let go"
    feed.start()
    assert feed.take(MAX_FEED, 0.1)[0] == key(120) + inter(160)


def test_a_worker_far_behind_is_dropped_and_memory_stays_bounded():
    feed = FlvFeed(limit=2000)
    pushed(feed, [key(0)])
    feed.start()
    for i in range(1, 40):
        feed.write(key(i * 40) if i % 10 == 0 else inter(i * 40))
    assert feed.behind and feed.kept < 2000 + 20 * len(key(0))
    with pytest.raises(Behind, match="behind the push"):
        feed.take(MAX_FEED, 0.1)
    feed.start()                                  # the replacement: from the latest keyframe
    assert feed.take(MAX_FEED, 0.1)[0].startswith(key(30 * 40))


def test_takes_stay_within_a_feed_chunk():
    feed = FlvFeed()
    pushed(feed, [key(0)] + [inter(i) for i in range(1, 3000)])
    feed.start()
    data, _ = feed.take(MAX_FEED, 0.1)
    assert 0 < len(data) <= MAX_FEED
    assert [len(c) for c in chunks(b"x" * (MAX_FEED + 1))] == [MAX_FEED, 1]


# spot checks of a push: the ring of the last RING_BYTES and the span a sampled output segment came from ----------

def key_at(ts, cts=0, size=100):
    return _flv_tag(9, ts, b"\x17\x01" + cts.to_bytes(3, "big") + b"K" * size)


def inter_at(ts, size=100):
    return _flv_tag(9, ts, b"\x27\x01\x00\x00\x00" + b"P" * size)


def gops(first_ms, count, gop_ms=1000, frame_ms=40, size=100):
    """count GOPs of 25 pictures (a keyframe, then inter pictures) from first_ms, an audio tag beside each."""
    out = []
    for g in range(count):
        base = first_ms + g * gop_ms
        for f in range(gop_ms // frame_ms):
            ts = base + f * frame_ms
            out.append(key_at(ts, size=size) if f == 0 else inter_at(ts, size=size))
            out.append(audio(ts))
    return out


def test_the_ring_stays_within_its_bytes_and_always_starts_at_a_keyframe():
    ring = FlvRing(limit=20_000)
    tags = gops(0, 20)
    for i, t in enumerate(tags):
        ring.add(i, t, t[11] >> 4 == 1 and t[0] == 9)
        assert ring.bytes <= 20_000 and ring.bytes == sum(len(x[2]) for x in ring.tags)
        if ring.keys:
            assert ring.tags[0][0] == ring.keys[0][0], "the ring starts at a keyframe"
    assert ring.dropped_to > 0 and ring.tags[0][0] == ring.dropped_to
    assert ring.span(0, 500) is None, "a span whose keyframe left the ring cannot be served"
    # one GOP larger than the whole ring: nothing of it is kept (nothing in it could be checked)
    big = FlvRing(limit=1000)
    for i, t in enumerate([key_at(0, size=600), inter_at(40, size=600)]):
        big.add(i, t, i == 0)
    assert big.bytes == 0 and not big.keys and big.span(0, 100) is None


def test_a_span_starts_at_the_keyframe_at_or_before_it_and_is_timed_from_there():
    feed = FlvFeed()
    feed.write(HEADER)
    for t in (META, AVC, AAC):
        feed.write(t)
    feed.start()                                      # the worker starts before any picture: its origin is the first
    tags = gops(5000, 4)                              # the push's clock started before the worker (5 s in)
    for t in tags:
        feed.write(t)
    assert feed.origin_ms == 5000
    data, start = feed.span(1.5, 1.0)                 # the worker's [1.5, 2.5) is the push's [6.5, 7.5)
    assert start == 0.5, "timed from the keyframe at 6 s, the span file's first picture"
    wanted = [t for t in tags if 6000 <= int.from_bytes(t[4:7], "big") <= 7500 + END_SLACK_MS]
    assert data == HEADER + META + AVC + AAC + b"".join(wanted)
    data, start = feed.span(2.0, 1.0)                 # a segment starting on a keyframe starts the span there
    assert start == 0.0 and data.startswith(HEADER + META + AVC + AAC + key_at(7000))


def test_a_replacement_is_timed_from_its_own_first_keyframe_with_its_composition_offset():
    feed = FlvFeed()
    pushed(feed, [key_at(0, cts=80), inter_at(40), key_at(1000, cts=80), inter_at(1040)])
    feed.start()                                      # starts at the latest keyframe: shown at 1000 + 80 ms
    assert feed.origin_ms == 1080
    data, start = feed.span(0.0, 0.04)
    assert start == 0.0 and data.endswith(key_at(1000, cts=80) + inter_at(1040))
    negative = _flv_tag(9, 2000, b"\x17\x01" + ((1 << 24) - 40).to_bytes(3, "big") + b"K")   # a cts of -40 ms
    feed.write(negative)
    assert feed.ring.keys[-1][1] == 1960


def test_a_span_that_left_the_ring_is_none_not_a_wrong_span():
    feed = FlvFeed()
    feed.ring = FlvRing(limit=10_000)
    feed.write(HEADER)
    feed.start()
    for t in gops(0, 12):
        feed.write(t)
    assert feed.origin_ms == 0 and feed.span(0.0, 1.0) is None
    assert feed.span(11.0, 1.0) is not None
    late = FlvFeed()                                  # a worker whose first keyframe left the ring at once (a GOP
    late.ring = FlvRing(limit=3000)                   # larger than the ring): no origin, so no span is guessed
    late.write(HEADER)
    late.start()
    late.write(key_at(0, size=4000))
    for t in gops(1000, 1, size=10):
        late.write(t)
    assert late.ring.keys and late.origin_ms is None and late.span(0.0, 1.0) is None


def test_a_push_segment_dated_back_is_refused_and_the_first_two_of_each_worker_are_sampled():
    from edge.media.liveoffload import Offloaded, Replace
    from edge.media.package import Segment
    run = Offloaded(None, None, None, source="rtmp://127.0.0.1/live/k", ladder="240p", opts=None, record=False)
    run.feed, run.workers = FlvFeed(), ["b"]
    assert run._sampled("240p", Segment(0, 0.0, 1.0, b"", True))
    assert run._sampled("240p", Segment(1, 1.0, 1.0, b"", True))
    run._sampled("240p", Segment(2, 2.0, 1.0, b"", True))
    with pytest.raises(Replace, match="before the end of the one before it") as caught:
        run._sampled("240p", Segment(3, 1.5, 1.0, b"", True))     # back into what was cut: out of the ring's reach
    assert caught.value.distrust
    run.workers.append("c")                           # a replacement's times start again at its own first picture
    assert run._sampled("240p", Segment(0, 0.0, 1.0, b"", True))
    with pytest.raises(Replace):
        run._sampled("360p", Segment(0, -1.0, 1.0, b"", True))     # before the worker's first picture
