"""serve_transport: answer neighbours' requests for blocks over ZeroMQ ROUTER with CURVE encryption.

Every connection is CURVE-encrypted with the node's own key. A ZAP handler records each peer's transport key
(as the messages' User-Id); a peer's Hello must name the node id that key belongs to, and in fleet mode carry
a certificate from the fleet key. Requests from a peer that has not been admitted get REFUSED. Each peer has a
token bucket: a peer over its rate gets BUSY at once, so it cannot slow the others. Malformed frames get a
BAD_REQUEST reply (or are dropped when not even an id can be read); nothing a peer sends stops the server.
"""

import logging
import time
from dataclasses import dataclass, field

import trio
import zmq
import zmq.utils.z85

from edge.errors import DecodeError
from edge.fleet import CertificateError, check_certificate
from edge.ratelimit import UNLIMITED, ByteRate
from edge.identity import Identity, curve_public_of
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull
from edge.transport.zmqtrio import TrioSocket
from edge.wire import (PROTOCOL_VERSION, SUPPORTED_VERSIONS, Block, Error, ErrorCode, Get, Have, HaveReply, Hello,
                       Put, PutOk, Welcome, parse_message, serialize_message)

log = logging.getLogger(__name__)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
MAX_INFLIGHT = 256     # requests (or bursts of reads) being worked on at once, over all peers
READ_BATCH = 64        # reads answered in one worker-thread trip
DISK_THREADS = 2       # block reads and writes in worker threads, sized for a 2-core box
CAPS = ("store",)


@dataclass
class Policy:
    """Who may do what: admission 'open' (anyone reads; writes from write_allow) or 'fleet'."""

    admission: str = "open"
    fleet_key: bytes | None = None
    write_allow: frozenset = frozenset()
    rate: float = 200.0            # requests per second per peer
    burst: float = 400.0
    max_payload: int = 2 << 20
    upload: ByteRate = field(default_factory=lambda: UNLIMITED)   # shared with the gateway (upload_limit)


@dataclass
class Peer:
    key: bytes
    node: str | None = None
    admitted: bool = False
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self, rate: float, burst: float) -> bool:
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Metrics(dict):
    def inc(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class TransportServer:
    def __init__(self, store, identity: Identity, policy: Policy):
        self.store = store
        self.identity = identity
        self.policy = policy
        self.peers: dict[bytes, Peer] = {}
        self._by_user_id: dict[str, Peer] = {}
        self.metrics = Metrics()
        self._disk = trio.CapacityLimiter(DISK_THREADS)
        self._inflight = trio.Semaphore(MAX_INFLIGHT)
        self._refusal_logged: dict[str, float] = {}
        self.draining = False
        self._reads: list = []                 # (route, Have or Get) waiting for a read loop
        self._reads_waiting = trio.Event()
        self._reading = 0                      # read batches in worker threads now

    async def drain(self) -> None:
        """Stop taking requests (new ones get BUSY) and return when those running have finished."""
        self.draining = True
        for _ in range(MAX_INFLIGHT):
            await self._inflight.acquire()
        while self._reads or self._reading:
            await trio.sleep(0.01)

    # ZAP: record every CURVE client's key as its User-Id ----------------------------------------------------

    async def serve_zap(self, zap: TrioSocket) -> None:
        while True:
            frames = await zap.recv_multipart()
            version, request_id = frames[0], frames[1]
            mechanism = frames[5] if len(frames) > 5 else b""
            key = frames[6] if len(frames) > 6 else b""
            if mechanism != b"CURVE" or len(key) != 32:
                await zap.send_multipart([version, request_id, b"400", b"CURVE only", b"", b""])
                continue
            await zap.send_multipart([version, request_id, b"200", b"OK", zmq.utils.z85.encode(key), b""])

    # requests ----------------------------------------------------------------------------------------------------

    def _peer(self, user_id: str) -> Peer:
        peer = self._by_user_id.get(user_id)
        if peer is None:
            key = zmq.utils.z85.decode(user_id)
            peer = self.peers.get(key)
            if peer is None:
                peer = self.peers[key] = Peer(key, tokens=self.policy.burst)
            self._by_user_id[user_id] = peer
        return peer

    def _refuse_log(self, peer: Peer, why: str) -> None:
        self.metrics.inc("refusals")
        who = peer.node or zmq.utils.z85.encode(peer.key).decode()
        last = self._refusal_logged.get(who, 0.0)
        if time.monotonic() - last > 10:   # a peer-caused warning is rate-limited
            self._refusal_logged[who] = time.monotonic()
            log.warning("refused %s: %s", who, why)

    def _hello(self, peer: Peer, msg: Hello):
        common = set(msg.versions) & set(SUPPORTED_VERSIONS)
        if not common:
            return Error(0, ErrorCode.UNSUPPORTED_VERSION,
                         f"no common protocol version (this node speaks {list(SUPPORTED_VERSIONS)})")
        try:
            expected = curve_public_of(msg.node)
        except DecodeError as exc:
            return Error(0, ErrorCode.BAD_REQUEST, str(exc))
        if expected != peer.key:
            self._refuse_log(peer, f"its transport key does not belong to the node id it gave ({msg.node})")
            return Error(0, ErrorCode.REFUSED, "the transport key does not match the node id")
        if self.policy.admission == "fleet":
            try:
                check_certificate(msg.cert or b"", self.policy.fleet_key, msg.node)
            except CertificateError as exc:
                self._refuse_log(peer, f"not admitted to the fleet: {exc}")
                return Error(0, ErrorCode.REFUSED, f"not admitted to this fleet: {exc}")
        peer.node, peer.admitted = msg.node, True
        self.metrics.inc("hellos")
        return Welcome(self.identity.node_id, max(common), CAPS)

    def _read(self, msg):
        """Answer a Have or Get from the store (runs in a worker thread); returns (reply, bytes served)."""
        if isinstance(msg, Have):
            return HaveReply(msg.id, tuple(self.store.has(c) for c in msg.cids)), 0
        try:
            data = self.store.get(msg.cid)
        except (BlockNotFound, CorruptBlock):
            return Error(msg.id, ErrorCode.NOT_FOUND, f"this node does not hold {msg.cid}"), 0
        except StoreError as exc:
            log.error("reading %s failed: %s", msg.cid, exc)
            return Error(msg.id, ErrorCode.INTERNAL, "this node failed to answer; try another"), 0
        if msg.offset > len(data):
            return Error(msg.id, ErrorCode.BAD_REQUEST, f"offset {msg.offset} is past the block's {len(data)} bytes"), 0
        end = len(data) if msg.length is None else min(len(data), msg.offset + msg.length)
        whole = msg.offset == 0 and end == len(data)
        return Block(msg.id, msg.cid, msg.offset, len(data), data if whole else data[msg.offset:end]), end - msg.offset

    async def _serve_reads(self, sock: TrioSocket) -> None:
        """One of DISK_THREADS loops answering reads: each takes every read waiting (up to READ_BATCH) in one
        worker-thread trip, so the busier the node, the larger the batches and the cheaper each read."""
        while True:
            while not self._reads:
                self._reads_waiting = trio.Event()
                await self._reads_waiting.wait()
            reads, self._reads = self._reads[:READ_BATCH], self._reads[READ_BATCH:]
            self._reading += 1
            try:
                results = await trio.to_thread.run_sync(lambda: [self._read(msg) for _, msg in reads])
            finally:
                self._reading -= 1
            for (route, _), (reply, nbytes) in zip(reads, results):
                if isinstance(reply, Block):
                    await self.policy.upload.spend(nbytes)
                    self.metrics.inc("blocks_served")
                    self.metrics.inc("bytes_served", nbytes)
                elif isinstance(reply, Error) and reply.code == ErrorCode.NOT_FOUND:
                    self.metrics.inc("not_found")
                await self._send(sock, route, reply)

    async def _handle(self, peer: Peer, msg):
        if isinstance(msg, Hello):
            return self._hello(peer, msg)
        rid = getattr(msg, "id", 0)
        if not peer.admitted:
            self._refuse_log(peer, "a request before an accepted hello")
            return Error(rid, ErrorCode.REFUSED, "say hello (with a valid certificate in a fleet) first")
        if isinstance(msg, (Have, Get)):   # an admitted peer's reads go through the burst path; this is a fallback
            reply, nbytes = await trio.to_thread.run_sync(self._read, msg, limiter=self._disk)
            return reply
        if isinstance(msg, Put):
            if self.policy.admission == "open" and peer.node not in self.policy.write_allow:
                self._refuse_log(peer, "a put from a node not allowed to write")
                return Error(rid, ErrorCode.REFUSED, "this node does not accept writes from you")
            try:
                stored = await trio.to_thread.run_sync(lambda: self.store.put(msg.cid, msg.data, verify=True),
                                                       limiter=self._disk)
            except DecodeError as exc:
                return Error(rid, ErrorCode.BAD_REQUEST, str(exc))
            except (QuotaExceeded, StoreFull) as exc:
                return Error(rid, ErrorCode.QUOTA, str(exc))
            self.metrics.inc("blocks_stored")
            return PutOk(rid, stored > 0)
        return Error(rid, ErrorCode.BAD_REQUEST, f"{type(msg).__name__} is not a request")

    async def _answer(self, sock: TrioSocket, route: bytes, peer: Peer, msg) -> None:
        try:
            reply = await self._handle(peer, msg)
        except StoreError as exc:
            log.error("request %r failed: %s", msg, exc)
            reply = Error(getattr(msg, "id", 0), ErrorCode.INTERNAL, "this node failed to answer; try another")
        finally:
            self._inflight.release()
        await self._send(sock, route, reply)

    async def _send(self, sock: TrioSocket, route: bytes, reply) -> None:
        try:
            await sock.send_multipart([route, *serialize_message(reply)])
        except zmq.ZMQError as exc:   # the peer went away (ROUTER_MANDATORY): nothing to tell it
            if exc.errno != zmq.EHOSTUNREACH:
                raise

    async def serve(self, sock: TrioSocket, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Take requests as they come; reads (Have, Get) queue for the read loops, the rest get a task each."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            for _ in range(DISK_THREADS):
                nursery.start_soon(self._serve_reads, sock)
            while True:
                await self._take(sock, nursery, await sock.recv_multipart(copy=False))

    async def _take(self, sock, nursery, frames) -> None:
        """Check one request; a read joins the read queue, anything else is answered by a task of its own."""
        route = frames[0].bytes
        user_id = frames[-1].get("User-Id") if len(frames) > 1 else None
        if user_id is None:
            return   # not CURVE-authenticated: cannot happen with curve_server set
        peer = self._peer(user_id)
        self.metrics.inc("requests")
        body = [f.buffer for f in frames[1:]]
        try:
            msg = parse_message(body, max_payload=self.policy.max_payload)
        except DecodeError as exc:
            self.metrics.inc("bad_requests")
            await self._send(sock, route, Error(0, ErrorCode.BAD_REQUEST, str(exc)))
            return
        if self.draining or not peer.take(self.policy.rate, self.policy.burst):
            self.metrics.inc("busy")
            await self._send(sock, route, Error(getattr(msg, "id", 0), ErrorCode.BUSY,
                                                "too many requests; slow down"))
            return
        if peer.admitted and isinstance(msg, (Have, Get)):
            self._reads.append((route, msg))
            self._reads_waiting.set()
            return
        await self._inflight.acquire()
        nursery.start_soon(self._answer, sock, route, peer, msg)


async def serve_transport(store, identity: Identity, policy: Policy, endpoint: str, *,
                          task_status=trio.TASK_STATUS_IGNORED, context: zmq.Context | None = None):
    """Bind endpoint (tcp://host:port; port 0 picks one) and serve until cancelled; reports (server, endpoint).

    Each server has its own ZeroMQ context unless given one: a context holds one ZAP handler."""
    own = context is None
    ctx = context or zmq.Context()
    server = TransportServer(store, identity, policy)
    zap = TrioSocket(ctx.socket(zmq.REP))
    router = TrioSocket(ctx.socket(zmq.ROUTER))
    try:
        zap.sock.bind(ZAP_ENDPOINT)
        r = router.sock
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.MAXMSGSIZE, policy.max_payload + 128 * 1024)   # libzmq drops a peer that sends more
        r.setsockopt(zmq.SNDHWM, 1000)
        r.setsockopt(zmq.RCVHWM, 1000)
        r.curve_server = True
        r.curve_secretkey = zmq.utils.z85.encode(identity.curve_secret)
        r.curve_publickey = zmq.utils.z85.encode(identity.curve_public)
        r.zap_domain = b"hearth"
        if endpoint.endswith(":0"):
            port = r.bind_to_random_port(endpoint[:-2])
            endpoint = f"{endpoint[:-2]}:{port}"
        else:
            r.bind(endpoint)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_zap, zap)
            await nursery.start(server.serve, router)
            log.info("serving blocks at %s as %s", endpoint, identity.node_id)
            task_status.started((server, endpoint))
    finally:
        router.close()
        zap.close()
        if own:
            ctx.term()
