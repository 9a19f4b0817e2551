"""An RTMP push cut on a neighbour (`hearth live publish rtmp://… --on NODE|auto`): the requester's half of the feed.

The push is taken by the same gate as a local one (edge/media/rtmpgate.py: the app and the key checked before
any media); its FLV tags are not decoded here (the agent never decodes untrusted media), only sorted by their
first bytes: the metadata and the sequence headers (AVC and AAC configuration) are kept, and the tags from the
latest video keyframe on (the last GOP). The worker gets, in LiveFeed chunks of at most MAX_FEED bytes (one in
flight, the worker holding FEED_WINDOW more at most: edge/wire/jobs.py), the FLV header, the kept metadata and
sequence headers, then the tags from the latest keyframe on as they arrive. A replacement worker starts the same
way, from the latest keyframe the requester has: its decoder can start there, and the stream goes on after the
discontinuity (edge/media/liveoffload.py).

Spot checks of a push (edge/media/liveoffload.py's _check): the requester keeps no file of the push, so besides
the feed it keeps a ring of the last RING_BYTES of tags, cut only at keyframes (it always starts at one), and
writes the span a sampled output segment came from (the header, metadata and sequence headers, then the tags
from the keyframe at or before the segment's start to its end) to a scratch file that the check process decodes.
Times: the worker's decoder (edge/media/transcode.py) times its outputs from its first decoded picture, which is
the first video keyframe of its feed (it starts at one; H.264 decoding starts there), at that tag's presentation
time (FLV timestamp + composition offset, as FFmpeg's FLV demuxer gives it). The feed notes that keyframe's time
when the worker starts (`origin_ms`), so an output's [start, start + duration) is the push's [origin_ms + start,
origin_ms + start + duration); the check process times the span file from its own first picture, the span's
keyframe, and is given the start shifted by (origin_ms - that keyframe's time). Both sides read the same bytes
with the same demuxer, so they agree to the millisecond. A span whose keyframe has left the ring (the checks fell
behind) cannot be checked: span() says so and the check is skipped and counted.

Back-pressure: the push is never slowed (the encoder is live). A worker that falls more than MAX_BEHIND bytes
behind the push is dropped and replaced (it would only fall further behind), and the replacement starts at the
latest keyframe: what the slow one did not get is skipped, not queued without bound.
"""

import itertools
import threading
from collections import deque

import trio

from edge.transport.client import TransportError
from edge.wire import ErrorCode
from edge.wire.jobs import MAX_FEED, LiveFeed

MAX_BEHIND = 32 << 20      # bytes of the push a worker may not have taken yet before it is replaced
BUSY_WAIT = 0.05           # seconds before a chunk the worker was too busy for is sent again
T_AUDIO, T_VIDEO, T_DATA = 8, 9, 18
RING_BYTES = 32 << 20      # the push kept for spot checks: it must cover the source of a sampled segment until its
                           # check runs: the worker's lag (its feed window, decoder, encoder and outbox of 8 outputs:
                           # a few segments) plus CHECKS_WAITING sampled segments queued for the checker; 32 MiB is
                           # ~45 s of a 6 Mbit/s 1080p push, ~13 s at 20 Mbit/s (past that, checks are skipped, counted)
END_SLACK_MS = 600         # tags kept past a span's end: the check decodes MARGIN (0.5 s) further, and reordered frames


class Behind(Exception):
    """The worker fell more than MAX_BEHIND bytes behind the push."""


class FlvFeed:
    """The push's FLV as the gate writes it (write: the header once, then one whole tag a call; from the pump's
    thread), read by one worker's feeder at a time (start, take; from Trio's threads)."""

    def __init__(self, limit: int = MAX_BEHIND):
        self.limit = limit
        self.cond = threading.Condition()
        self.header = b""
        self.config: dict[str, bytes] = {}   # "meta", "video", "audio": the latest metadata and sequence headers
        self.tags: deque = deque()           # the tags from index `first` on
        self.first = 0
        self.kept = 0                        # bytes in tags
        self.keyframe = 0                    # index of the latest video keyframe (0 before any)
        self.cursor = None                   # index of the next tag the worker gets (None: no worker)
        self.ended = ""                      # why the push ended ("" while it goes on)
        self.behind = False                  # the worker fell more than limit bytes behind (it is dropped)
        self.received = 0
        self.ring = FlvRing()                # the last RING_BYTES of tags, for spot checks
        self.origin_index = None             # index of the current worker's first tag
        self.origin_ms = None                # presentation time of its first keyframe: its outputs' time 0

    # the pump's side --------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self.cond:
            self.received += len(data)
            if not self.header:
                self.header = bytes(data[:9]) + b"\0\0\0\0"    # FLV header and PreviousTagSize0
                self.cond.notify_all()
                return
            kind, payload = data[0], data[11:-4]
            if kind == T_DATA:
                self.config["meta"] = data
                self.cond.notify_all()
                return
            if kind == T_VIDEO and len(payload) >= 2 and payload[0] & 0x0F == 7 and payload[1] == 0:
                self.config["video"] = data                   # AVC sequence header (SPS/PPS)
                self.cond.notify_all()
                return
            if kind == T_AUDIO and len(payload) >= 2 and payload[0] >> 4 == 10 and payload[1] == 0:
                self.config["audio"] = data                   # AAC AudioSpecificConfig
                self.cond.notify_all()
                return
            index = self.first + len(self.tags)
            key = kind == T_VIDEO and bool(payload) and payload[0] >> 4 == 1
            if key:
                self.keyframe = index
            self.ring.add(index, data, key)
            if key and self.origin_ms is None and self.origin_index is not None \
                    and self.origin_index >= self.ring.dropped_to:   # the first keyframe the worker got
                self.origin_ms = self.ring.picture_from(self.origin_index)
            self.tags.append(data)
            self.kept += len(data)
            if self.cursor is not None and self.cursor < self.keyframe and self.kept > self.limit:
                self.behind, self.cursor = True, None           # the worker is dropped; its tags are not kept
            keep_from = self.keyframe if self.cursor is None else min(self.keyframe, self.cursor)
            while self.first < keep_from:
                self.kept -= len(self.tags.popleft())
                self.first += 1
            self.cond.notify_all()

    def end(self, why: str) -> None:
        with self.cond:
            self.ended = why or "the push ended"
            self.cond.notify_all()

    # the worker's side ------------------------------------------------------------------------------------

    def start(self) -> bytes:
        """A new worker: the FLV header, the metadata and sequence headers; its tags start at the latest keyframe."""
        with self.cond:
            while not self.header and not self.ended:
                self.cond.wait(0.5)
            self.cursor, self.behind = max(self.first, self.keyframe), False
            self.origin_index, self.origin_ms = self.cursor, self.ring.picture_from(self.cursor)
            return self.header + b"".join(self.config[k] for k in ("meta", "video", "audio") if k in self.config)

    def stop(self) -> None:
        """The worker is gone: keep only the last GOP until the next one starts."""
        with self.cond:
            self.cursor = None

    def span(self, start: float, duration: float) -> tuple[bytes, float] | None:
        """The push over the current worker's output time [start, start + duration) as an FLV file, and start
        timed from that file's first picture (see the module's docstring); None when its keyframe has left the
        ring or the worker's first keyframe is not known."""
        with self.cond:
            if self.origin_ms is None:
                return None
            begin = self.origin_ms + start * 1000
            found = self.ring.span(begin, begin + duration * 1000 + END_SLACK_MS)
            if found is None:
                return None
            tags, first = found
            config = b"".join(self.config[k] for k in ("meta", "video", "audio") if k in self.config)
            head = self.header
        return head + config + b"".join(tags), (begin - first) / 1000

    def take(self, most: int, wait: float) -> tuple[bytes, bool]:
        """(the next tags, at most `most` bytes unless one tag is larger, whether the push ended after them);
        waits up to `wait` seconds for one. Behind if the worker fell more than the limit behind."""
        with self.cond:
            def ready():
                return self.ended or self.cursor is None or self.first + len(self.tags) > self.cursor
            if not self.cond.wait_for(ready, wait):
                return b"", False
            if self.behind or self.cursor is None:
                raise Behind(f"it fell more than {self.limit >> 20} MiB behind the push")
            start = self.cursor - self.first
            out, size, i = [], 0, start
            while i < len(self.tags) and (not out or size + len(self.tags[i]) <= most):
                out.append(self.tags[i])
                size += len(self.tags[i])
                i += 1
            self.cursor = self.first + i
            return b"".join(out), bool(self.ended) and i == len(self.tags)


def _timestamp(tag: bytes) -> int:
    """An FLV tag's timestamp (ms; its decoding time)."""
    return int.from_bytes(tag[4:7], "big") | tag[7] << 24


def _picture_ms(tag: bytes) -> int:
    """An AVC video tag's presentation time: its timestamp plus its composition offset (signed 24 bits)."""
    cts = int.from_bytes(tag[13:16], "big") if len(tag) >= 16 else 0
    return _timestamp(tag) + (cts - (1 << 24) if cts & 0x800000 else cts)


class FlvRing:
    """The last `limit` bytes of a push's tags (not the headers), dropped a GOP at a time from the oldest so that it
    starts at a keyframe; callers hold FlvFeed's lock. The tags are the same bytes objects the feed holds."""

    def __init__(self, limit: int = RING_BYTES):
        self.limit = limit
        self.tags: deque = deque()       # (index, timestamp ms, tag)
        self.keys: deque = deque()       # (index, presentation ms) of the keyframes in tags
        self.bytes = 0
        self.dropped_to = 0              # every tag before this index has left the ring

    def add(self, index: int, tag: bytes, key: bool) -> int | None:
        """Keep tag; its presentation time if it is a keyframe."""
        picture = _picture_ms(tag) if key else None
        self.tags.append((index, _timestamp(tag), tag))
        self.bytes += len(tag)
        if key:
            self.keys.append((index, picture))
        while self.bytes > self.limit and self.tags:
            if self.keys and self.tags[0][0] < self.keys[0][0]:
                until = self.keys[0][0]                    # tags before the first keyframe
            elif len(self.keys) >= 2:
                until = self.keys[1][0]                    # the oldest GOP
                self.keys.popleft()
            elif not self.keys:
                until = self.tags[0][0] + 1                # no keyframe yet: the oldest tag
            else:                                          # one GOP larger than the ring: nothing checkable
                until = self.tags[-1][0] + 1
                self.keys.clear()
            while self.tags and self.tags[0][0] < until:
                self.bytes -= len(self.tags.popleft()[2])
            self.dropped_to = max(self.dropped_to, until)
        return picture

    def picture_from(self, index: int) -> int | None:
        """The presentation time of the first keyframe at or after index (None: not here yet, or tags from
        index on have left the ring, so the first one kept may not be the first one sent)."""
        if index < self.dropped_to:
            return None
        return next((ms for i, ms in self.keys if i >= index), None)

    def span(self, begin_ms: float, end_ms: float) -> tuple[list[bytes], int] | None:
        """(the tags from the latest keyframe showing at or before begin_ms up to the timestamp end_ms, that
        keyframe's presentation time), or None when no kept keyframe is that early."""
        start = None
        for i, ms in self.keys:
            if ms > begin_ms + 0.5:
                break
            start = (i, ms)
        if start is None:
            return None
        out = []
        for _, ts, tag in itertools.islice(self.tags, start[0] - self.tags[0][0], None):
            if ts > end_ms:
                break
            out.append(tag)
        return out, start[1]


def chunks(data: bytes):
    """data cut into LiveFeed payloads (a tag larger than MAX_FEED spans several)."""
    for at in range(0, len(data), MAX_FEED):
        yield data[at:at + MAX_FEED]


async def feeding(client, job_id: str, feed: FlvFeed, failed: list) -> None:
    """Send the push to the worker (client: a connection of its own) until it ends; a failure is appended to
    failed (the puller drops the worker on it), never raised (the puller's nursery stays a plain one)."""
    seq = 0

    async def send(data: bytes, end: bool) -> None:
        nonlocal seq
        while True:
            try:
                await client.request(lambda rid: LiveFeed(rid, job_id, seq, end, data))
                break
            except TransportError as exc:
                if getattr(exc, "code", None) != ErrorCode.BUSY:
                    raise
            if feed.behind:
                raise Behind(f"it fell more than {feed.limit >> 20} MiB behind the push")
            await trio.sleep(BUSY_WAIT)            # the worker's decoder is behind: the window is full
        seq += 1

    try:
        first = await trio.to_thread.run_sync(feed.start)
        for part in chunks(first):
            await send(part, False)
        while True:
            data, end = await trio.to_thread.run_sync(feed.take, MAX_FEED, 0.5)
            if not data and not end:
                continue
            parts = list(chunks(data)) or [b""]
            for i, part in enumerate(parts):
                await send(part, end and i == len(parts) - 1)
            if end:
                return
    except Behind as exc:
        failed.append(str(exc))
    except TransportError as exc:
        failed.append(f"it did not take the push: {exc}")
    finally:
        feed.stop()


class FeedPublisher:
    """The feed as the local decoder's publisher (edge/media/live.py's _run_decoder), when no neighbour is left to
    cut the push and this box takes it over: from the latest keyframe on, as a replacement worker would."""

    def __init__(self, feed: FlvFeed):
        self.feed = feed
        self.closed = False

    def pump(self, write, idle: float) -> str:
        try:
            write(self.feed.start())
            while not self.closed:
                data, end = self.feed.take(MAX_FEED, 0.5)
                if data:
                    write(data)
                if end:
                    return self.feed.ended
            return "stopped"
        except Behind as exc:
            return f"this box's decoder {exc}"
        finally:
            self.feed.stop()

    def close(self) -> None:
        self.closed = True


def pushed(gate, feed: FlvFeed, stop, idle: float):
    """Wait (a thread) for the gate's publisher, then pump its FLV into feed until it ends; the publisher, or
    None when stop came first."""
    publisher = gate.wait(stop)
    if publisher is None:
        feed.end("stopped before anyone published")
        return None

    def pump():
        feed.end(publisher.pump(feed.write, idle))
    threading.Thread(target=pump, name="rtmp-feed", daemon=True).start()
    return publisher
