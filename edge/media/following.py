"""The follower's half of the live fan-out (edge/media/fanout.py, whose Fanout this is mixed into): the
subscriptions to neighbours' live streams, each message checked before use, the window kept in memory, the
source replaced when it goes silent, missed segments asked of the publisher.

Following supplies want(), window() and segment() to the gateway; Fanout supplies identity, peers, connect,
relay, upload_limit, table, store, port, latencies, relayed, refused, _ctx, _nursery, _listening, _send,
_caching and _cache_lane.
"""

import logging
import time
from dataclasses import dataclass, field

import trio
import zmq
import zmq.utils.monitor
import zmq.utils.z85

from edge.errors import DecodeError
from edge.identity import check_node_id, curve_public_of, verify
from edge.ipld import cbor
from edge.ipld.cid import DAG_PB, RAW, cid_from_bytes
from edge.ipld.dagpb import parse_pbnode
from edge.media.silence import Arrivals
from edge.store.content import bytes_dag
from edge.transport.zmqtrio import TrioSocket
from edge.wire.live import LiveSource, LiveWant
from edge.wire.streamentry import parse_entry

log = logging.getLogger(__name__)
MAX_SEGMENT = 32 << 20    # bytes of one segment on the fan-out (a 10 s 4K rung fits)
MAX_LATENCIES = 4096      # cut -> playable figures kept
WANTED_FOR = 30.0         # seconds a subscription is kept after the last viewer's request (or a relay child)
FIRST_GAP = 3.0           # seconds a new source may take to send its first message
MAX_SUBSCRIPTIONS = 8     # neighbours' live streams followed at once
MAX_HELD = 64 << 20       # bytes of segments kept per followed stream (its window; older ones go first)
MAX_HELD_SEGMENTS = 128
CACHE_QUEUE = 16          # segments waiting to be cached in the store; past it, one is served from memory only
FILL_WAIT = 2.0           # seconds a viewer's request waits for a listed segment still on its way
RCVHWM = 64               # messages a SUB socket queues before libzmq drops


def topic_of(publisher: str, name: str) -> bytes:
    return b"L" + curve_public_of(publisher) + name.encode() + b"\0"


def heartbeat_body(publisher: str, name: str, ms: int) -> bytes:
    return cbor.dumps({"p": publisher, "n": name, "t": ms})


@dataclass
class Subscription:
    publisher: str
    name: str
    topic: bytes
    wanted: float
    entry: object = None                                  # the newest StreamEntry checked
    raw: bytes = b""                                      # ... its signed bytes
    data: dict = field(default_factory=dict)              # CID -> segment bytes checked against it
    cut: dict = field(default_factory=dict)               # CID -> when the publisher cut it (unix seconds)
    source: str | None = None
    switches: int = 0
    heard: float = 0.0
    filling: bool = False
    filled: int = 0                                       # segments asked of the publisher (missed on the fan-out)
    arrived: trio.Event = field(default_factory=trio.Event)   # set (and replaced) when a segment comes
    cached: set = field(default_factory=set)              # CIDs of data whose blocks are in the store too
    arrivals: Arrivals = field(default_factory=Arrivals)  # gaps between the source's messages (its silence limit)


class Following:
    """Fanout's subscriptions to neighbours' live streams (see the module's docstring for what Fanout supplies)."""

    def want(self, entry) -> None:
        """A viewer here asks for a neighbour's live stream: subscribe (or keep the subscription)."""
        key = (entry.publisher, entry.name)
        sub = self.subs.get(key)
        if sub is not None:
            sub.wanted = time.monotonic()
            return
        if self._nursery is None or len(self.subs) >= MAX_SUBSCRIPTIONS or entry.ended:
            return
        sub = self.subs[key] = Subscription(entry.publisher, entry.name, topic_of(entry.publisher, entry.name),
                                            time.monotonic())
        self._nursery.start_soon(self._follow, sub)

    def capacity(self, sub: Subscription) -> int:
        """Nodes this one can relay sub's stream to: live_relay, fewer where the upload limit allows fewer
        copies of the stream's rate (with half again for bursts)."""
        if not self.upload_limit or sub.entry is None:
            return self.relay
        rate = sum(t.kbps for t in sub.entry.tracks) * 1000 / 8 or 1
        return max(0, min(self.relay, int(self.upload_limit / (rate * 1.5))))

    def window(self, publisher: str, name: str):
        """(the newest entry heard, {CID: bytes}) of a subscribed stream, or None."""
        sub = self.subs.get((publisher, name))
        if sub is None or sub.entry is None:
            return None
        return sub.entry, sub.data

    async def segment(self, publisher: str, name: str, cid, wait: float = FILL_WAIT) -> bytes | None:
        """The bytes of cid in a followed stream's window: from memory, or once they come (on the fan-out, or
        asked of the publisher when the fan-out missed them) within wait seconds; None otherwise."""
        sub = self.subs.get((publisher, name))
        if sub is None:
            return None
        with trio.move_on_after(wait):
            while (data := sub.data.get(cid)) is None:
                await sub.arrived.wait()
            return data
        return None

    def _arrived(self, sub: Subscription) -> None:
        sub.arrived.set()
        sub.arrived = trio.Event()

    async def _fill(self, sub: Subscription) -> None:
        """Ask the publisher for the window's segments that did not come on the fan-out (missed while the source
        changed), each checked against its CID."""
        sub.filling = True
        try:
            with trio.fail_after(FILL_WAIT * 4):
                async with self.connect(sub.publisher) as client:
                    for cid in self._missing(sub):
                        data = await _get_file(client, cid)
                        if await trio.to_thread.run_sync(self._checked, sub, cid, data):
                            sub.data[cid] = data
                            sub.filled += 1
                            self._arrived(sub)
        except Exception as exc:   # noqa: BLE001 - the gateway's own fetch is the last resort
            log.info("asking %s for missed segments of %s failed: %r", sub.publisher, sub.name, exc)
        finally:
            sub.filling = False

    def _missing(self, sub: Subscription) -> list:
        entry = sub.entry
        if entry is None:
            return []
        listed = [c for t in entry.tracks for c in t.inits] + [s.cid for t in entry.tracks for s in t.segments[-3:]]
        return [cid for cid in listed if cid not in sub.data]

    def _keep(self, sub: Subscription) -> bool:
        recent = time.monotonic() - sub.wanted < WANTED_FOR
        relaying = self._listening.get(sub.topic, 0) > 0
        ended = sub.entry is not None and sub.entry.ended
        return (recent or relaying) and not ended and self.peers.get(sub.publisher) is not None

    async def _follow(self, sub: Subscription) -> None:
        """Subscribe where the publisher says, move to another source when this one closes its connection or goes
        silent and the publisher names another (the answer to the report; to each lease renewal too)."""
        try:
            dead: list[str] = []
            got = None
            while self._keep(sub):
                if got is None:
                    got = await self._ask(sub, dead)
                source, endpoint, every = got
                if source is None:
                    got = None
                    await trio.sleep(1.0)
                    continue
                dead = []
                sub.source = source
                sub.switches += 1
                how, got = await self._listen(sub, source, endpoint, every)
                if how == "gone":
                    log.info("live %s: source %s closed its connection; asking %s for another", sub.name, source,
                             sub.publisher)
                    if source != sub.publisher:
                        dead = [source]
        except Exception as exc:   # noqa: BLE001 - one subscription's failure; viewers fall back to fetching
            log.warning("live %s of %s: the subscription failed: %r", sub.name, sub.publisher, exc)
        finally:
            self.subs.pop((sub.publisher, sub.name), None)

    async def _ask(self, sub: Subscription, dead: list[str]):
        """(source node, endpoint, seconds to ask again) from the publisher, or (None, ...) if it cannot say."""
        try:
            with trio.fail_after(3.0):
                async with self.connect(sub.publisher) as client:
                    reply = await client.request(lambda rid: LiveWant(rid, sub.name, self.port, self.capacity(sub),
                                                                      tuple(dead)))
        except Exception as exc:   # noqa: BLE001 - gone, slow, or lying: asked again shortly
            log.info("asking %s where to follow %s failed: %s", sub.publisher, sub.name, exc)
            return None, None, 0
        if not isinstance(reply, LiveSource):
            return None, None, 0
        try:
            check_node_id(reply.node)
        except DecodeError:
            return None, None, 0
        endpoint = reply.endpoint
        if endpoint.startswith("tcp://:"):           # the publisher's own: at the address we know it by
            peer = self.peers.get(sub.publisher)
            if peer is None:
                return None, None, 0
            endpoint = with_port(peer.endpoint(), int(endpoint.rsplit(":", 1)[1]))
        return reply.node, endpoint, max(1.0, min(reply.every, 60.0))

    async def _listen(self, sub: Subscription, source: str, endpoint: str, every: float):
        """Follow source on one SUB socket (kept across lease renewals and silences the publisher answers with the
        same source: a new one would miss what comes while it connects) until it closes the connection ("gone",
        None: its process ended, no need to wait for a silence), the publisher names another source at a renewal
        or after a silence ("moved", its answer) or the stream is no longer wanted ("done", None)."""
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_SEGMENT + 4096)
        sock.curve_secretkey = zmq.utils.z85.encode(self.identity.curve_secret)
        sock.curve_publickey = zmq.utils.z85.encode(self.identity.curve_public)
        sock.curve_serverkey = zmq.utils.z85.encode(curve_public_of(source))
        sock.setsockopt(zmq.SUBSCRIBE, sub.topic)
        if endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(endpoint)
        tsock = TrioSocket(sock)
        tmonitor = TrioSocket(monitor)
        outcome = ["done", None]
        sub.arrivals.last = None           # the wait for a new source's first message is no gap of its own
        try:
            async with trio.open_nursery() as nursery:
                async def renew():           # the lease: ask again; the answer may move us
                    while True:
                        await trio.sleep(every)
                        got = await self._ask(sub, [])
                        if got[0] is not None and (got[0], got[1]) != (source, endpoint):
                            outcome[:] = ["moved", got]
                            nursery.cancel_scope.cancel()
                            return
                nursery.start_soon(renew)

                async def closed():          # the source's end of the connection closed: its process is gone
                    while True:              # (a slow one keeps it open: only its silence says anything then)
                        event = zmq.utils.monitor.parse_monitor_message(await tmonitor.recv_multipart())
                        if event["event"] == zmq.EVENT_DISCONNECTED:
                            outcome[:] = ["gone", None]
                            nursery.cancel_scope.cancel()
                            return
                nursery.start_soon(closed)
                gap = FIRST_GAP
                while self._keep(sub):
                    with trio.move_on_after(gap) as idle:
                        frames = await tsock.recv_multipart()
                    if idle.cancelled_caught:
                        log.info("live %s: source %s went silent (%.2f s); asking %s for another", sub.name, source,
                                 gap, sub.publisher)
                        got = await self._ask(sub, [source] if source != sub.publisher else [])
                        if got[0] is not None and (got[0], got[1]) != (source, endpoint):
                            outcome[:] = ["moved", got]
                            break
                        # told to stay (the publisher itself, or no answer): the same socket waits on, and the
                        # gap, once the source is heard again, raises its limit (a new socket would lose both)
                        gap = self._gap(sub)
                        continue
                    sub.arrivals.note(time.monotonic())
                    gap = self._gap(sub)
                    await self._take(sub, frames)
                nursery.cancel_scope.cancel()
        finally:
            sock.disable_monitor()
            tmonitor.close(0)
            tsock.close(0)
        return outcome[0], outcome[1]

    def _gap(self, sub: Subscription) -> float:
        """Silence that makes a source dead: adapted to how unevenly its messages came lately, under a segment
        (edge/media/silence.py)."""
        seconds = sub.entry.seconds / 1000 if sub.entry is not None and sub.entry.seconds else 2.0
        return sub.arrivals.limit(seconds)

    async def _take(self, sub: Subscription, frames) -> None:
        if len(frames) < 2 or frames[0] != sub.topic:
            self.refused += 1
            return
        kind = frames[1]
        ok = False
        if kind == b"S" and len(frames) == 5:
            ok = await trio.to_thread.run_sync(self._segment, sub, frames)
        elif kind == b"E" and len(frames) == 3:
            ok = await trio.to_thread.run_sync(self._entry, sub, frames[2])
        elif kind == b"H" and len(frames) == 4:
            ok = self._heartbeat(sub, frames[2], frames[3])
        if not ok:
            self.refused += 1
            return
        sub.heard = time.monotonic()
        if kind == b"S":
            self._arrived(sub)
        elif kind == b"E" and not sub.filling and self._missing(sub):
            self._nursery.start_soon(self._fill, sub)
        if self._listening.get(sub.topic, 0) > 0:     # someone follows this stream through us: relay it
            self._send(frames)
            self.relayed += sum(len(f) for f in frames)

    def _segment(self, sub: Subscription, frames) -> bool:
        """(worker thread) Keep the segment if its bytes give its CID."""
        try:
            cid = cid_from_bytes(frames[2])
            cut = cbor.loads(frames[3]).get("cut")
            data = frames[4]
            if len(data) > MAX_SEGMENT or not self._checked(sub, cid, data):
                return False
        except (DecodeError, ValueError, AttributeError, TypeError):
            return False
        sub.data[cid] = data
        if isinstance(cut, int):
            sub.cut[cid] = cut / 1000
        held = sum(len(d) for d in list(sub.data.values()))
        for old in list(sub.data):                     # bounded even if no entry ever lists them: oldest go
            if held <= MAX_HELD and len(sub.data) <= MAX_HELD_SEGMENTS:
                break
            held -= len(sub.data.pop(old))
            sub.cut.pop(old, None)
            sub.cached.discard(old)
        return True

    def _cache(self, sub: Subscription, root, blocks) -> None:
        """(worker thread) A checked segment's blocks into the store, unpinned: a browser's data channel and
        neighbours' Gets find them there too (the window itself is served from memory)."""
        if self.store is None:
            return
        try:
            self.store.put_many(blocks)
        except Exception as exc:   # noqa: BLE001 - a full or failing disk: memory still serves the viewers
            log.info("live %s: could not cache a segment: %s", sub.name, exc)
            return
        if root in sub.data:
            sub.cached.add(root)

    def cached(self, publisher: str, name: str, cid) -> bool:
        """Whether a followed stream's segment cid is in the store yet (its stream's cids.json lists only those:
        a page asks the data channel for them, and this node's gateway over HTTP for the others)."""
        sub = self.subs.get((publisher, name))
        return sub is not None and cid in sub.cached

    def _checked(self, sub: Subscription, cid, data: bytes) -> bool:
        """(worker thread) Whether data gives cid; then its blocks are cached in the store off the receiving
        path (a disk write must not delay what comes next), unless CACHE_QUEUE writes wait already."""
        made, blocks = bytes_dag(data)
        if made.cid != cid:
            return False
        if self.store is not None:
            trio.from_thread.run_sync(self._cache_later, sub, cid, blocks)
        return True

    def _cache_later(self, sub: Subscription, root, blocks) -> None:
        if self._caching < CACHE_QUEUE:
            self._caching += 1
            self._nursery.start_soon(self._cache_soon, sub, root, blocks)

    async def _cache_soon(self, sub: Subscription, root, blocks) -> None:
        try:
            async with self._cache_lane:
                await trio.to_thread.run_sync(self._cache, sub, root, blocks)
        finally:
            self._caching -= 1

    def _entry(self, sub: Subscription, raw: bytes) -> bool:
        """(worker thread) Take the window if its publisher signed it and it is newer than the one held."""
        try:
            entry = parse_entry(raw)
            if (check_node_id(entry.publisher) != check_node_id(sub.publisher) or entry.name != sub.name
                    or entry.kind != "live"):
                return False
        except DecodeError:
            return False
        if sub.entry is not None and entry.seq <= sub.entry.seq:
            return True                                # an old one again (two paths): nothing new, not a lie
        now = time.time()
        listed = {c for t in entry.tracks for c in t.inits} | {s.cid for t in entry.tracks for s in t.segments}
        held = sub.entry
        before = set() if held is None else {s.cid for t in held.tracks for s in t.segments}
        for cid in {s.cid for t in entry.tracks for s in t.segments} - before:   # media segments new in the window
            if cid in sub.cut and cid in sub.data and len(self.latencies) < MAX_LATENCIES:
                self.latencies.append(now - sub.cut[cid])   # playable here from now on (an init segment is cut
                                                            # when the stream starts, listed with its first one)
        sub.entry, sub.raw = entry, raw
        # snapshots (list() of a dict is one step under the GIL): the Trio thread adds segments meanwhile
        for cid in [c for c in list(sub.data) if c not in listed and c not in sub.cut]:
            sub.data.pop(cid, None)
            sub.cached.discard(cid)
        for cid in [c for c in list(sub.cut) if c not in listed]:
            if cid in before:                         # left the window
                sub.cut.pop(cid, None)
                sub.data.pop(cid, None)
                sub.cached.discard(cid)
        if self.table is not None:
            self.table.keep(sub.publisher, {entry.name: (entry, raw)}, complete=False)
        return True

    def _heartbeat(self, sub: Subscription, body: bytes, signature: bytes) -> bool:
        if len(body) > 512 or len(signature) > 128:
            return False
        try:
            hb = cbor.loads(body)
        except DecodeError:
            return False
        return (isinstance(hb, dict) and hb.get("n") == sub.name and hb.get("p") == sub.publisher
                and verify(sub.publisher, body, signature))


async def _get_file(client, cid) -> bytes:
    """A segment's bytes: one raw block, or a DAG-PB node's raw leaves in order (add_bytes' one level)."""
    block = await client.get(cid)
    if cid.codec == RAW:
        return block
    if cid.codec != DAG_PB:
        raise DecodeError("a segment is a raw block or a UnixFS file")
    links = parse_pbnode(block).links
    if len(links) > MAX_SEGMENT // (64 << 10):
        raise DecodeError("a segment of too many blocks")
    return b"".join([await client.get(link.cid) for link in links])


def with_port(endpoint: str, port: int) -> str:
    return endpoint.rsplit(":", 1)[0] + f":{port}"
