"""The neighbourhood's streams: this node's own signed stream entries, and a bounded table of its neighbours'.

Own entries are made from the store's names (a worker thread reads them and signs what changed, see
OwnStreams.update) and handed to the transport server, which answers ListStreams with them. Neighbours' entries
arrive in Streams replies (ask_streams, from the agent's hello probe each 5 s, or at once for a live stream's
playlist) and go into StreamTable.offer, which uses nothing before it is checked: each entry's signature is its
publisher's (edge/wire/streamentry.py), and a neighbour gives only entries it publishes itself (the node its
CURVE handshake proved), so no neighbour can inject or alter another publisher's streams. The table is bounded
(MAX_PUBLISHERS publishers, MAX_STREAMS entries each) and forgets a publisher that leaves the peer table or is
not heard from for STREAM_TTL seconds.
"""

import logging
import time
from dataclasses import dataclass, field

import trio

from edge.errors import DecodeError
from edge.identity import Identity, check_node_id
from edge.ipld.cid import parse_cid
from edge.service import Handle
from edge.wire.messages import MAX_STREAMS, ListStreams, Streams
from edge.wire.streamentry import (MAX_ENTRY, MAX_EPOCHS, MAX_SEGMENTS, MAX_TRACKS, NAME, Epoch, Segment,
                                   StreamEntry, TrackEntry, EntryError, next_seq, parse_entry, serialize_entry, signed_size)

log = logging.getLogger(__name__)
MAX_PUBLISHERS = 256      # as many as the peer table keeps neighbours
STREAM_TTL = 60.0         # seconds a publisher's entries are kept without hearing from it again
MAX_PAGES = 64            # Streams replies one ask may take
FRESH_FOR = 0.5           # seconds a live entry asked of its publisher answers every playlist request for it


def _ms(seconds) -> int:
    return max(0, int(round(float(seconds or 0) * 1000)))


def entry_of_row(row: dict, publisher: str, seq: int, keep: int = MAX_SEGMENTS) -> StreamEntry:
    """The entry saying what the store's name row of a stream holds (an on-demand directory or a live window,
    its last keep segments of each track)."""
    meta = row.get("meta") or {}
    live = meta.get("kind") == "live"
    tracks = []
    for t in (meta.get("tracks") or [])[:MAX_TRACKS]:
        segs, epochs = (), ()
        if live:
            window = _within_epochs(list(t.get("segments") or [])[-keep:])
            segs = tuple(Segment(int(s["index"]), int(round(float(s["duration"]) * 1e6)), parse_cid(s["cid"]),
                                 int(s["bytes"])) for s in window)
            epochs = _epochs(t, window)
        tracks.append(TrackEntry(str(t.get("name", "")), str(t.get("kind", "video")), str(t.get("codec") or ""),
                                 int(t.get("width") or 0), int(t.get("height") or 0), int(t.get("kbps") or 0),
                                 _ms(t.get("frame_rate")), parse_cid(t["init"]) if live and t.get("init") else None,
                                 segs, epochs))
    return StreamEntry(row["name"], publisher, parse_cid(row["cid"]), "live" if live else "vod", tuple(tracks),
                       _ms(meta.get("segment_seconds")), int(meta.get("window") or 0), bool(meta.get("ended")),
                       0 if live else _ms(meta.get("duration")), int(row.get("updated") or 0), seq)


def _within_epochs(window: list[dict]) -> list[dict]:
    """The newest segments of window that span at most MAX_EPOCHS encoder epochs (edge/media/live.py's
    LiveSink.discontinuity marks a later epoch's segments with "epoch" and its "init")."""
    numbers = [s.get("epoch", 0) for s in window]
    while len(set(numbers)) > MAX_EPOCHS:
        numbers.pop(0)
    return window[len(window) - len(numbers):]


def _epochs(track: dict, window: list[dict]) -> tuple[Epoch, ...]:
    """The epochs window spans, where it spans a switch of encoder (none where all of it is the first epoch)."""
    if not any(s.get("epoch") for s in window):
        return ()
    out = []
    for s in window:
        number = s.get("epoch", 0)
        if not out or number != out[-1].number:
            init = s.get("init") if number else (track.get("first_init") or track["init"])
            out.append(Epoch(int(s["index"]), int(number), parse_cid(init)))
    return tuple(out)


class OwnStreams:
    """This node's signed entries, re-signed only when a stream's row changes (a live stream's each segment)."""

    def __init__(self, identity: Identity):
        self.identity = identity
        self._signed: dict[str, tuple[str, int, bytes]] = {}   # name -> (what it was made from, seq, bytes)
        self.entries: tuple[tuple[str, bytes], ...] = ()         # (name, signed bytes), what the server gives

    def update(self, rows: list[dict]) -> tuple[tuple[str, bytes], ...]:
        """Blocking (signs; run in a worker thread): the entries for the store's stream rows now."""
        signed = {}
        for row in rows[:MAX_STREAMS]:
            made_from = repr((row.get("cid"), row.get("meta")))
            old = self._signed.get(row["name"])
            if old is not None and old[0] == made_from:
                signed[row["name"]] = old
                continue
            seq = next_seq(old[1] if old else 0)
            try:
                data = self._signed_entry(row, seq)
            except (DecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:   # a row no one would take
                log.warning("stream %s is not listed to neighbours: %s", row.get("name"), exc)
                continue
            signed[row["name"]] = (made_from, seq, data)
        self._signed = signed
        self.entries = tuple((name, data) for name, (_, _, data) in sorted(signed.items()))
        return self.entries

    def _signed_entry(self, row: dict, seq: int) -> bytes:
        """The signed entry of row; a live window too large for one entry (a long ladder) is cut to the newest
        segments that fit (a player needs the last few)."""
        keep = MAX_SEGMENTS
        while True:
            entry = entry_of_row(row, self.identity.node_id, seq, keep)
            if keep <= 2 or signed_size(entry) <= MAX_ENTRY:
                return serialize_entry(entry, self.identity)
            keep //= 2


@dataclass
class Publisher:
    node: str
    heard: float
    entries: dict = field(default_factory=dict)   # name -> StreamEntry
    raws: dict = field(default_factory=dict)      # the signed bytes of each -> the entry (checked once)


class StreamTable:
    """The neighbours' streams, per publisher, each entry checked before it is kept."""

    def __init__(self, self_id: str, ttl: float = STREAM_TTL, clock=time.time, max_publishers: int = MAX_PUBLISHERS):
        self.self_key = check_node_id(self_id)
        self.ttl = ttl
        self.clock = clock
        self.max_publishers = max_publishers
        self.publishers: dict[bytes, Publisher] = {}   # the publisher's CURVE key -> its streams
        self.refused = 0                                # entries refused (malformed, unsigned, someone else's)

    def offer(self, sender: str, raws, *, complete: bool = True) -> int:
        """Take the signed entries sender (a neighbour whose key its handshake proved) gave; returns how many
        were kept. complete: they are all its streams (those it no longer lists are dropped); else an update of
        some. An entry that is malformed, unsigned, someone else's or older than the one held is refused."""
        fresh, refused = self.check(sender, raws, self.known(sender))
        return self.keep(sender, fresh, refused, complete=complete)

    def known(self, sender: str) -> dict:
        """{signed bytes: entry} of what sender gave before (checked then: not checked again)."""
        pub = self.publishers.get(check_node_id(sender))
        return {} if pub is None else dict(pub.raws)

    def check(self, sender: str, raws, known: dict) -> tuple[dict, int]:
        """({name: entry} of the entries in raws that are sender's own and signed by it, how many were refused).
        Touches nothing of the table: the agent runs it in a worker thread (a signature check is ~0.1 ms)."""
        key = check_node_id(sender)
        fresh: dict[str, tuple[StreamEntry, bytes]] = {}
        refused = 0
        for raw in list(raws)[:MAX_STREAMS]:
            entry = known.get(raw)
            if entry is None:
                try:
                    entry = parse_entry(raw)
                    if check_node_id(entry.publisher) != key:
                        raise EntryError(f"{sender} gave an entry of another publisher's stream")
                except DecodeError as exc:
                    refused += 1
                    log.info("refused a stream entry from %s: %s", sender, exc)
                    continue
            fresh[entry.name] = (entry, bytes(raw))
        return fresh, refused

    def keep(self, sender: str, fresh: dict, refused: int = 0, *, complete: bool = True) -> int:
        """Put what check found into the table (see offer); returns how many entries that was."""
        self.refused += refused
        key = check_node_id(sender)
        if key == self.self_key:
            return 0
        now = self.clock()
        pub = self.publishers.get(key)
        if pub is None:
            if not fresh:
                return 0
            if len(self.publishers) >= self.max_publishers:   # the one heard from least recently goes
                del self.publishers[min(self.publishers, key=lambda k: self.publishers[k].heard)]
            pub = self.publishers[key] = Publisher(sender, now)
        pub.heard = now
        kept = {} if complete else dict(pub.entries)
        raws = {} if complete else dict(pub.raws)
        for name, (entry, raw) in fresh.items():
            held = pub.entries.get(name)
            if held is not None and held.seq > entry.seq:   # no replay of older ones
                kept[name] = held
                raws.update((r, e) for r, e in pub.raws.items() if e is held)
            else:
                kept[name], raws[raw] = entry, entry
        pub.entries = kept
        pub.raws = {r: e for r, e in raws.items() if kept.get(e.name) is e}
        if not kept:
            del self.publishers[key]
        return len(fresh)

    def expire(self, alive=lambda node: True, now: float | None = None) -> None:
        """Forget publishers no longer neighbours (alive(node) false) or not heard from for ttl seconds."""
        now = self.clock() if now is None else now
        for key, pub in list(self.publishers.items()):
            if now - pub.heard > self.ttl or not alive(pub.node):
                del self.publishers[key]

    def entries(self) -> list[StreamEntry]:
        return [e for pub in self.publishers.values() for e in pub.entries.values()]

    def find(self, name: str, publisher: str | None = None) -> list[StreamEntry]:
        """The entries of streams called name (of publisher only, when given, whichever text of its key)."""
        if publisher is not None:
            try:
                pub = self.publishers.get(check_node_id(publisher))
            except DecodeError:
                return []
            pubs = [pub] if pub is not None else []
        else:
            pubs = list(self.publishers.values())
        return [p.entries[name] for p in pubs if name in p.entries]


async def ask_streams(client, name: str = "") -> list[bytes]:
    """The signed entries a neighbour publishes (only those of name, when given), over an open client: page after
    page, at most MAX_PAGES. Nothing is checked here: StreamTable.offer checks each."""
    if name and not NAME.match(name):
        return []
    got: list[bytes] = []
    for _ in range(MAX_PAGES):
        reply = await client.request(lambda rid: ListStreams(rid, len(got), name))
        if not isinstance(reply, Streams):
            raise DecodeError(f"expected a Streams reply, got {type(reply).__name__}")
        got.extend(reply.entries)
        if not reply.entries or len(got) >= min(reply.total, MAX_STREAMS):
            break
    return got[:MAX_STREAMS]


class Neighbourhood:
    """This node's streams and its neighbours', for the agent (which feeds it) and the gateway (which reads it).

    connect(node) opens a greeted client to a neighbour (an async context manager); peers is the PeerTable, which
    says who is still a neighbour and how near (its score)."""

    def __init__(self, identity: Identity, peers, connect, table: StreamTable | None = None):
        self.node_id = identity.node_id
        self.own = OwnStreams(identity)
        self.table = table or StreamTable(identity.node_id)
        self.peers = peers
        self.connect = connect
        self.asked = 0            # ListStreams exchanges made
        self.failed = 0           # ... that failed (the neighbour went, or answered wrongly)
        self._asked_at: dict = {}   # (publisher, name) -> when fresh() last asked (bounded by the table's size)

    def stats(self) -> dict:
        return {"own": len(self.own.entries), "neighbours": len(self.table.entries()), "refused": self.table.refused,
                "asked": self.asked, "failed": self.failed}

    async def heard(self, node: str, client) -> None:
        """A neighbour that lists "streams" answered a hello on client: take its entries. A failure here is
        this exchange's alone (logged; the entries held stay until they expire)."""
        self.asked += 1
        try:
            raws = await ask_streams(client)
            fresh, refused = await trio.to_thread.run_sync(self.table.check, node, raws, self.table.known(node))
            self.table.keep(node, fresh, refused)
        except Exception as exc:   # noqa: BLE001 - a refusal, a timeout, a lie: the neighbour's problem only
            self.failed += 1
            log.info("asking %s for its streams failed: %s", node, exc)

    def entries(self) -> list[StreamEntry]:
        self.table.expire(alive=lambda node: self.peers.get(node) is not None)
        return self.table.entries()

    def pick(self, name: str, publisher: str | None = None) -> StreamEntry | None:
        """The entry of a neighbour's stream called name (of publisher, when given): the nearest publisher's
        (LAN before WAN, then by score), as fetching takes the nearest holders first."""
        self.table.expire(alive=lambda node: self.peers.get(node) is not None)

        def near(entry):
            peer = self.peers.get(entry.publisher)
            return (peer.wan, -peer.score) if peer is not None else (True, 0.0)
        found = sorted(self.table.find(name, publisher), key=near)
        return found[0] if found else None

    async def fresh(self, entry: StreamEntry) -> StreamEntry:
        """entry as its publisher signs it now (a live stream's window: asked each time, there is no PUB/SUB yet);
        the entry held when the publisher cannot be asked."""
        key, now = (entry.publisher, entry.name), time.monotonic()
        if now - self._asked_at.get(key, -FRESH_FOR) < FRESH_FOR:   # the players of one stream ask the publisher
            found = self.table.find(entry.name, entry.publisher)        # about twice a second at most
            return found[0] if found else entry
        if len(self._asked_at) >= MAX_PUBLISHERS * 4:
            self._asked_at.clear()
        self._asked_at[key] = now
        self.asked += 1
        try:
            async with self.connect(entry.publisher) as client:
                raws = await ask_streams(client, entry.name)
            known = self.table.known(entry.publisher)
            fresh, refused = await trio.to_thread.run_sync(self.table.check, entry.publisher, raws, known)
            self.table.keep(entry.publisher, fresh, refused, complete=False)
        except Exception as exc:   # noqa: BLE001 - gone, slow, or lying: the window held is what there is
            self.failed += 1
            log.info("asking %s for stream %s failed: %s", entry.publisher, entry.name, exc)
        found = self.table.find(entry.name, entry.publisher)
        return found[0] if found else entry

    async def serve(self, store, publish, interval: float = 1.0, live_rows=None, *,
                    task_status=trio.TASK_STATUS_IGNORED):
        """The service that keeps this node's own entries signed as its streams change (each interval: a live
        stream's window moves each segment) and hands them to publish (the transport server's list). live_rows():
        the rows of the live streams the agent runs (their windows are in its memory, not in the store)."""
        task_status.started(Handle("streams", self.stats))
        while True:
            rows = await store.names("stream")
            if live_rows is not None:
                live = {r["name"]: r for r in live_rows()}
                rows = [live.pop(r["name"], r) for r in rows] + list(live.values())
            publish(await trio.to_thread.run_sync(self.own.update, rows))
            await trio.sleep(interval)
