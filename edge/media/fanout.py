"""Live fan-out: each live segment published once on ZeroMQ PUB/SUB with CURVE, relayed by the nodes that hear it.

Every node binds one XPUB socket (CURVE server, the node's own key; a ZAP handler admits only neighbours in the
peer table that were not rejected). A topic per stream: b"L" + the publisher's CURVE key + name + b"\\0".
Messages on a topic (all small but segments; each is at most MAX_SEGMENT bytes, and a subscriber whose queue
holds SNDHWM messages loses the rest, it is not buffered for):

    [topic, b"S", CID, cbor {"cut": ms}, data]    an init segment or segment, as the publisher stored it
    [topic, b"E", signed stream entry]             the window (edge/wire/streamentry.py), after its segments, and
                                                   again when a node subscribes (what it missed while it moved)
    [topic, b"H", cbor {"p", "n", "t"}, signature] a heartbeat, HEARTBEAT seconds apart

Nothing heard is used before it is checked: a segment's bytes must give its CID (content.bytes_dag, as the
publisher stored them), an entry and a heartbeat must carry the publisher's signature. A node re-publishes on its
own XPUB what it checked (relaying: the bytes are the publisher's, so whoever hears them checks them the same).

A node that wants a neighbour's live stream (the gateway has a viewer for it) asks the publisher over the
transport where to subscribe (LiveWant; the publisher's RelayTree answers itself or a relay with room) and asks
again every few seconds (its lease). A source silent for its silence limit (edge/media/silence.py: adapted to the
gaps between its messages, under a segment's duration; heartbeats come HEARTBEAT apart) is reported dead and
another is asked for; the publisher answers with a fallback for the reporter and keeps the relay in its tree until
the relay's own lease says it is dead (edge/media/relaytree.py). The subscriber's gateway serves the window and
the segments from memory (window()). The follower's half is edge/media/following.py.
"""

import logging
import time

import trio
import zmq
import zmq.utils.z85

from edge.errors import DecodeError
from edge.identity import Identity, curve_public_of
from edge.ipld import cbor
from edge.media.following import MAX_LATENCIES, Following, Subscription, with_port, heartbeat_body, topic_of
from edge.media.relaytree import ASK_EVERY, SELF, RelayTree
from edge.service import Handle
from edge.transport.zmqtrio import TrioSocket
from edge.wire.live import LiveSource, LiveWant

log = logging.getLogger(__name__)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
HEARTBEAT = 0.1           # seconds between a publisher's heartbeats
SNDHWM = 64               # messages queued per subscriber before it loses the rest
RESEND_EVERY = 0.25       # seconds: a topic's window is re-sent to new subscribers at most this often


class Fanout(Following):
    """The node's XPUB, its subscriptions to neighbours' live streams, and the relay trees of its own."""

    def __init__(self, identity: Identity, peers, connect, *, direct: int = 1, relay: int = 2,
                 upload_limit: int = 0, table=None, store=None):
        self.identity = identity
        self.peers = peers                  # PeerTable: who is a neighbour, at which address
        self.connect = connect              # node -> async context manager of a greeted client
        self.direct = direct                # subscribers the publisher takes itself
        self.relay = relay                  # nodes this one relays a stream to
        self.upload_limit = upload_limit    # bytes/s this node uploads in all (0: no limit)
        self.table = table                  # StreamTable: entries heard here go into it too
        self.store = store                  # the blocking Store: segments heard are cached in it (worker threads)
        self.port = 0
        self.trees: dict[str, RelayTree] = {}        # own live stream name -> its tree
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.latencies: list[float] = []    # cut -> playable here, seconds (neighbours' segments)
        self.relayed = 0                    # bytes re-published to subscribers' topics
        self.refused = 0                    # messages that failed their check
        self._pub: zmq.Socket | None = None
        self._listening: dict[bytes, int] = {}       # topic -> subscribers on our XPUB (0/1: XPUB says first/last)
        self._windows: dict[str, bytes] = {}         # own live stream name -> its newest signed window
        self._resent: dict[bytes, float] = {}        # topic -> when its window was last re-sent (only known ones)
        self._nursery = None
        self._caching = 0                   # cache writes waiting or running
        self._cache_lane = trio.CapacityLimiter(1)

    # the publisher's side ----------------------------------------------------------------------------------

    def open_stream(self, name: str) -> None:
        self.trees.setdefault(name, RelayTree(self.direct))

    def close_stream(self, name: str) -> None:
        self.trees.pop(name, None)
        self._windows.pop(name, None)

    def source_for(self, node: str | None, msg: LiveWant) -> LiveSource | None:
        """(the transport's serving thread) Where node subscribes to our stream msg.name."""
        tree = self.trees.get(msg.name)
        if tree is None or node is None:
            return None
        parent = tree.assign(node, msg.port, msg.capacity, msg.dead)
        if parent == SELF:
            return LiveSource(msg.id, self.identity.node_id, f"tcp://:{self.port}", ASK_EVERY)
        member = tree.members.get(parent)
        peer = self.peers.get(parent)
        if member is None or peer is None:
            return LiveSource(msg.id, self.identity.node_id, f"tcp://:{self.port}", ASK_EVERY)
        return LiveSource(msg.id, parent, with_port(peer.endpoint(), member.port), ASK_EVERY)

    def publish_segment(self, name: str, cid, data: bytes, cut: float) -> None:
        self._send([topic_of(self.identity.node_id, name), b"S", bytes(cid),
                    cbor.dumps({"cut": int(cut * 1000)}), data])

    def publish_entry(self, name: str, raw: bytes) -> None:
        self._windows[name] = raw
        self._send([topic_of(self.identity.node_id, name), b"E", raw])

    def _window_of(self, topic: bytes) -> bytes | None:
        """The newest signed window this node has of topic's stream: its own, or one it follows (and relays)."""
        me = self.identity.node_id
        for name, raw in list(self._windows.items()):
            if topic_of(me, name) == topic:
                return raw
        for sub in list(self.subs.values()):
            if sub.topic == topic and sub.raw:
                return sub.raw
        return None

    def _send(self, frames) -> None:
        if self._pub is None:
            return
        try:
            self._pub._send_now(frames)    # XPUB drops a message for a subscriber whose queue is full
        except zmq.Again:
            return
        self._pub._poke()                  # the task reading subscriptions re-checks the socket's events

    async def _heartbeats(self):
        while True:
            await trio.sleep(HEARTBEAT)
            me = self.identity.node_id
            for name in list(self.trees):
                body = heartbeat_body(me, name, int(time.time() * 1000))
                self._send([topic_of(me, name), b"H", body, self.identity.sign(body)])

    # the service -------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        lat = self.latencies              # in the order the segments came (the reader sorts)
        return {"port": self.port, "publishing": {n: t.stats() for n, t in self.trees.items()},
                "following": {f"{n}@{p}": {"source": s.source, "switches": s.switches, "filled": s.filled}
                              for (p, n), s in self.subs.items()},
                "cut_to_playable_ms": [round(x * 1000, 1) for x in lat[-MAX_LATENCIES:]] if lat else [],
                "relayed": self.relayed, "refused": self.refused}

    def _admit(self, key: bytes) -> bool:
        """ZAP: a CURVE key of a neighbour in the peer table that was not rejected."""
        for peer in list(self.peers.peers.values()):
            try:
                if curve_public_of(peer.node) == key and not peer.rejected:
                    return True
            except DecodeError:
                continue
        return False

    async def _zap(self, zap: TrioSocket) -> None:
        while True:
            frames = await zap.recv_multipart()
            version, request_id = frames[0], frames[1] if len(frames) > 1 else b""
            mechanism = frames[5] if len(frames) > 5 else b""
            key = frames[6] if len(frames) > 6 else b""
            if mechanism == b"CURVE" and len(key) == 32 and self._admit(key):
                await zap.send_multipart([version, request_id, b"200", b"OK", zmq.utils.z85.encode(key), b""])
            else:
                await zap.send_multipart([version, request_id, b"400", b"not a neighbour", b"", b""])

    async def _subscriptions(self, xpub: TrioSocket) -> None:
        """XPUB tells each subscription to a topic (XPUB_VERBOSE) and the last one leaving: whether to relay it.
        A new subscriber (a follower that just moved here, its source dead) is sent the newest window at once:
        it lists the segments it missed while it moved, which it then asks of the publisher, instead of waiting
        for the next segment's window (up to a segment's duration more without a picture)."""
        while True:
            frames = await xpub.recv_multipart()
            msg = frames[0] if frames else b""
            if msg[:1] in (b"\x01", b"\x00"):
                topic = bytes(msg[1:])
                if msg[:1] == b"\x01":
                    self._listening[topic] = 1
                    raw = self._window_of(topic)
                    now = time.monotonic()
                    if raw is not None and now - self._resent.get(topic, 0.0) >= RESEND_EVERY:
                        if len(self._resent) > 64:    # streams that ended or are no longer followed
                            self._resent.clear()
                        self._resent[topic] = now     # (a neighbour subscribing in a loop gains no amplifier)
                        self._send([topic, b"E", raw])
                else:
                    self._listening.pop(topic, None)

    async def serve(self, binds: list[str], port: int = 0, *, task_status=trio.TASK_STATUS_IGNORED):
        """Bind the XPUB on each address of binds (port 0: a free one), heartbeat our streams, follow theirs."""
        self._ctx = zmq.Context()
        zap = self._ctx.socket(zmq.REP)
        xpub = self._ctx.socket(zmq.XPUB)
        try:
            zap.bind(ZAP_ENDPOINT)
            xpub.setsockopt(zmq.LINGER, 0)
            xpub.setsockopt(zmq.SNDHWM, SNDHWM)
            xpub.setsockopt(zmq.XPUB_VERBOSE, 1)       # every subscription, not only a topic's first
            xpub.setsockopt(zmq.MAXMSGSIZE, 4096)      # subscribers send only subscriptions
            xpub.curve_server = True
            xpub.curve_secretkey = zmq.utils.z85.encode(self.identity.curve_secret)
            xpub.curve_publickey = zmq.utils.z85.encode(self.identity.curve_public)
            xpub.zap_domain = b"hearth-live"
            if any(":" in b for b in binds):
                xpub.setsockopt(zmq.IPV6, 1)
            host = binds[0]
            host = f"[{host}]" if ":" in host else host
            if port:
                xpub.bind(f"tcp://{host}:{port}")
            else:
                port = xpub.bind_to_random_port(f"tcp://{host}")
            for other in binds[1:]:
                xpub.bind(f"tcp://[{other}]:{port}" if ":" in other else f"tcp://{other}:{port}")
            self.port = port
            self._pub = TrioSocket(xpub)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._zap, TrioSocket(zap))
                nursery.start_soon(self._subscriptions, self._pub)
                nursery.start_soon(self._heartbeats)
                task_status.started(Handle("fanout", self.stats))
                await trio.sleep_forever()
        finally:
            self._pub = None
            xpub.close(0)
            zap.close(0)
            self._ctx.term()
