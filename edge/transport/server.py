"""serve_transport: answer neighbours' requests for blocks over ZeroMQ ROUTER with CURVE encryption.

Every connection is CURVE-encrypted with the node's own key. A ZAP handler records each peer's transport key
(as the messages' User-Id); a peer's Hello must name the node id that key belongs to, and in fleet mode carry
a certificate from the fleet key. Requests from a peer that has not been admitted get REFUSED. Each peer has a
token bucket: a peer over its rate gets BUSY at once, so it cannot slow the others. Malformed frames get a
BAD_REQUEST reply (or are dropped when not even an id can be read); nothing a peer sends stops the server.

One thread owns the ROUTER and ZAP sockets and answers reads (Have, Get) itself, a batch of waiting requests
per wake-up: a request costs a parse, a store read and a send, with no hop between threads or tasks (the Trio
version spent ~0.2 ms a request on its scheduler alone). A block the upload limit cannot pay for yet is held
back (up to PACED_PEER for one peer and PACED_BYTES in all, then BUSY; a peer with nothing held may still
have one block held up to twice PACED_BYTES, so a flood cannot crowd the others out and memory stays bounded)
and sent when it can be, while hellos, Haves and other blocks go on being answered. A GetMany's blocks are read
from the store a group at a time (one native call) and the small ones go back several to a Blocks message.
Puts, which write and fsync, go to a small worker pool and their replies come back through the serving thread.
Trio starts the thread, reads its metrics and stops it.

Per-peer state is bounded too: keys cost nothing to make, so the table of peers keeps the MAX_PEERS used last
and forgets a peer idle for PEER_IDLE (it says hello again). A request costs tokens by what it asks for (a
Have of 1,024 CIDs is 1,024 lookups). A connection must finish its handshake within HANDSHAKE_MS.
In a fleet, the Welcome carries this node's certificate: members check it as it checks theirs.
"""

import collections
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import trio
import zmq
import zmq.utils.z85

from edge.errors import DecodeError
from edge.fleet.certificates import CertificateError, check_certificate
from edge.identity import Identity, curve_public_of
from edge.logsafe import printable
from edge.ratelimit import UNLIMITED, ByteRate
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull
from edge.transport.zmqtrio import _NOW_MORE, ZERO_COPY_MIN
from edge.wire import (MAX_PROBE, SUPPORTED_VERSIONS, Block, Blocks, Error, ErrorCode, Get, GetMany, Have, HaveReply,
                       Hello, Probe, ProbeData, Put, PutOk, Welcome, parse_message, serialize_message)

log = logging.getLogger(__name__)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
RECV_BATCH = 64        # requests (a GetMany counts each block) taken per wake-up before the other sockets get a look
BLOCKS_BYTES = 128 << 10   # a Blocks reply is sent once it carries this much (a larger block goes alone)
READ_GROUP = 16        # blocks of a GetMany read from the store in one call
PUT_THREADS = 2        # block writes (fsync) in worker threads, sized for a 2-core box
MAX_PUTS = 16          # writes queued or running at once, over all peers; more get BUSY
SNDHWM = 256           # replies queued for one peer; a peer that does not read them loses the rest
POLL_MS = 500          # the serving thread re-checks for a stop at least this often
PACED_BYTES = 16 << 20 # block bytes waiting for the upload limit, over all peers; more Gets get BUSY ...
PACED_PEER = 4 << 20   # ... and for one peer (a fetch's window of 16 blocks), so one cannot crowd out the rest
MAX_PEERS = 4096       # peers (CURVE keys) whose state is kept; the one used least recently goes first ...
PEER_IDLE = 300.0      # ... and one silent this long (seconds) is forgotten
HANDSHAKE_MS = 5000    # a connection that has not finished its CURVE handshake by then is closed
MAX_LOGGED = 1024      # peers whose last refusal log line is remembered (for its rate limit)
CAPS = ("store", "probe", "getmany")
SAY_HELLO = "say hello (with a valid certificate in a fleet) first"
PROBE_FILLER = bytes(MAX_PROBE)   # what a throughput probe gets (the link encrypts it; its content is nothing)
_MORE = int(zmq.SNDMORE)   # a plain int: enum arithmetic costs µs


@dataclass
class Policy:
    """Who may do what: admission 'open' (anyone reads; writes from write_allow) or 'fleet'."""

    admission: str = "open"
    fleet_key: bytes | None = None
    write_allow: frozenset = frozenset()
    rate: float = 5000.0           # requests per second per peer (the config's peer_requests_per_second)
    burst: float = 10000.0
    max_payload: int = 2 << 20
    upload: ByteRate = field(default_factory=lambda: UNLIMITED)   # shared with the gateway (upload_limit)
    cert: bytes | None = None      # this node's fleet certificate, sent in each Welcome (fleet admission)


@dataclass
class Peer:
    key: bytes
    node: str | None = None
    admitted: bool = False
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)
    paced: int = 0           # bytes of its blocks held for the upload limit
    used: float = field(default_factory=time.monotonic)   # its last message

    def take(self, rate: float, burst: float, now: float, n: int = 1) -> bool:
        """Take n requests' tokens, all or none."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True

    def take_up_to(self, n: int, rate: float, burst: float, now: float) -> int:
        """Take up to n requests' tokens; how many were granted."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        granted = min(n, int(self.tokens))
        self.tokens -= granted
        return granted


class Metrics(dict):
    def inc(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class TransportServer:
    """The serving thread's state and work. Everything but drain/stop runs in that thread."""

    def __init__(self, store, identity: Identity, policy: Policy):
        self.store = store
        self.identity = identity
        self.policy = policy
        self.peers: collections.OrderedDict[str, Peer] = collections.OrderedDict()   # User-Id -> Peer, LRU first
        self.metrics = Metrics()
        self._refusal_logged: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.draining = False
        self.loops = 0                         # serving-loop turns finished (drain waits for one more)
        self.turn_began: float | None = None   # when the turn being worked on began (None: waiting in poll)
        self._stopping = False
        self._puts = ThreadPoolExecutor(max_workers=PUT_THREADS, thread_name_prefix="hearth-put")
        self._putting = 0                      # puts queued or running
        self._done: collections.deque = collections.deque()   # (route, reply) from the put workers
        self._paced: collections.deque = collections.deque()  # (when, route, peer, reply) held for the limit
        self._paced_bytes = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # who may write, by CURVE key: the key a peer's connection proved, not the text its Hello gave
        self._writers = frozenset(_curve_or_none(n) for n in policy.write_allow) - {None}

    # control, from Trio ----------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop taking requests (new ones get BUSY) and return when those running have finished (blocks held
        for the upload limit go at once)."""
        turn = self.loops   # once this turn has ended, every request after it sees the flag
        self.draining = True
        self._wake()
        while self.loops <= turn or self._putting or self._paced:
            await trio.sleep(0.01)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:   # the pipe is full: the thread has wake-ups waiting already
            pass

    def stuck_for(self) -> float:
        """Seconds the serving thread has been on one turn (0 while it waits for requests): a thread stuck on
        a dying card's read shows here, and the watchdog stops vouching for the node."""
        began = self.turn_began
        return 0.0 if began is None else max(0.0, time.monotonic() - began)

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    def close(self) -> None:
        self._puts.shutdown(wait=True)   # a write in progress finishes; none is left half done
        os.close(self._wake_r)
        os.close(self._wake_w)

    # the serving thread ---------------------------------------------------------------------------------------

    def run(self, router: zmq.Socket, zap: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(zap, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stopping:
            self.turn_began = None
            timeout = POLL_MS
            if self._paced:
                timeout = min(timeout, max(0, int((self._paced[0][0] - time.monotonic()) * 1000) + 1))
            ready = dict(poller.poll(timeout))
            self.turn_began = time.monotonic()
            if self._wake_r in ready:
                self._drain_wakeups()
            if zap in ready:
                self._serve_zap(zap)
            while self._done:
                self._send(router, *self._done.popleft())
                self._putting -= 1
            self._send_paced(router)
            if router in ready:
                budget = RECV_BATCH
                while budget > 0:
                    try:
                        head = router.recv(zmq.NOBLOCK, copy=False)   # the route, with the peer's User-Id
                    except zmq.Again:
                        break
                    body = router.recv_multipart() if head.more else []   # a message arrives whole
                    try:
                        budget -= self._take(router, head, body)
                    except zmq.ZMQError:
                        raise
                    except Exception:   # a last resort: a bug before the request could be read
                        log.exception("a request failed")
                        self.metrics.inc("errors")
                        budget -= 1
            self.loops += 1

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _serve_zap(self, zap: zmq.Socket) -> None:
        """ZAP: accept every CURVE client, recording its key as the User-Id of its messages."""
        while True:
            try:
                frames = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id = frames[0], frames[1] if len(frames) > 1 else b""
            mechanism = frames[5] if len(frames) > 5 else b""
            key = frames[6] if len(frames) > 6 else b""
            if mechanism != b"CURVE" or len(key) != 32:
                zap.send_multipart([version, request_id, b"400", b"CURVE only", b"", b""])
            else:
                zap.send_multipart([version, request_id, b"200", b"OK", zmq.utils.z85.encode(key), b""])

    def _peer(self, user_id: str) -> Peer:
        """The state of the peer with this User-Id (its CURVE key), made if new; the table stays bounded."""
        now = time.monotonic()
        peers = self.peers
        peer = peers.get(user_id)
        if peer is not None:
            peers.move_to_end(user_id)
            peer.used = now
            return peer
        # the least recently used come first: forget the idle, then the oldest while the table is full
        while peers:
            oldest = next(iter(peers.values()))
            if now - oldest.used <= PEER_IDLE and len(peers) < MAX_PEERS:
                break
            peers.popitem(last=False)
            self.metrics.inc("peers_forgotten")
        peer = peers[user_id] = Peer(zmq.utils.z85.decode(user_id), tokens=self.policy.burst, used=now)
        return peer

    def _take(self, router: zmq.Socket, head: zmq.Frame, body: list[bytes]) -> int:
        """Answer one message (reads and hellos here; a put goes to the workers); returns how many requests it
        held (the blocks of a GetMany each count)."""
        route = head.bytes
        user_id = head.get("User-Id")
        if user_id is None:
            return 1   # not CURVE-authenticated: cannot happen with curve_server set
        peer = self._peer(user_id)
        try:
            msg = parse_message(body, max_payload=self.policy.max_payload)
        except DecodeError as exc:
            self.metrics.inc("requests")
            self.metrics.inc("bad_requests")
            self._send(router, route, Error(0, ErrorCode.BAD_REQUEST, str(exc)))
            return 1
        if type(msg) is GetMany:
            self.metrics.inc("requests", len(msg.cids))
            if self.draining or not peer.admitted:
                return self._get_many_refused(router, route, peer, msg)
            self._get_many(router, route, peer, msg)
            return len(msg.cids)
        # a Have costs a lookup per CID: it is charged that many requests (and counted so); one larger than
        # the burst (a tight configured rate) takes a full bucket, so it can still be answered
        cost = max(1, len(msg.cids)) if type(msg) is Have else 1
        self.metrics.inc("requests", cost)
        rid = getattr(msg, "id", 0)
        if self.draining or not peer.take(self.policy.rate, self.policy.burst, time.monotonic(),
                                          min(cost, max(1, int(self.policy.burst)))):
            self.metrics.inc("busy")
            self._send(router, route, Error(rid, ErrorCode.BUSY, "too many requests; slow down"))
            return 1
        try:
            reply = self._answer(route, peer, msg)
        except Exception:   # a bug or an unexpected OS error (a failing card): this request fails, not the server
            log.exception("answering %r failed", msg)
            self.metrics.inc("errors")
            reply = Error(rid, ErrorCode.INTERNAL, "this node failed to answer; try another")
        if reply is not None:
            self._send(router, route, reply)
        return 1

    def _get_many(self, router: zmq.Socket, route: bytes, peer: Peer, msg: GetMany) -> None:
        """Answer each Get of a GetMany as a Get is answered; the blocks that can go now travel together in
        Blocks replies (one message, one encryption, for many small blocks), the rest each on its own: an Error,
        or a Block held for the upload limit. The store reads and checks them READ_GROUP at a time."""
        ids, sizes, datas, size = [], [], [], 0
        granted = peer.take_up_to(len(msg.cids), self.policy.rate, self.policy.burst, time.monotonic())
        for start in range(0, len(msg.cids), READ_GROUP):
            cids = msg.cids[start:min(granted, start + READ_GROUP)]
            read = self._read_group(cids) if cids and not self._paced else [None] * len(cids)
            for i in range(start, min(len(msg.cids), start + READ_GROUP)):
                rid, cid = msg.id + i, msg.cids[i]
                if i >= granted:
                    self.metrics.inc("busy")
                    reply = Error(rid, ErrorCode.BUSY, "too many requests; slow down")
                else:
                    got = read[i - start]
                    try:   # with blocks held for the upload limit, each is read as a Get is (bounds first)
                        reply = self._read_block(route, peer, rid, cid) if got is None else \
                            self._answer_read(route, peer, rid, cid, got)
                    except Exception:   # as in _take: this request fails, not the server
                        log.exception("answering a get of %s failed", cid)
                        self.metrics.inc("errors")
                        reply = Error(rid, ErrorCode.INTERNAL, "this node failed to answer; try another")
                if type(reply) is Block:
                    ids.append(rid)
                    sizes.append(reply.total)
                    datas.append(reply.data)
                    size += reply.total
                    if size >= BLOCKS_BYTES:
                        self._send(router, route, Blocks(tuple(ids), tuple(sizes), _joined(datas)))
                        ids, sizes, datas, size = [], [], [], 0
                elif reply is not None:
                    self._send(router, route, reply)
        if ids:
            self._send(router, route, Blocks(tuple(ids), tuple(sizes), _joined(datas)))

    def _read_group(self, cids) -> list:
        """store.get_many, or, if that fails as a whole (a bug), each one's exception."""
        try:
            return self.store.get_many(cids)
        except Exception as exc:   # noqa: BLE001 - each request of the group gets INTERNAL below
            log.exception("reading %d blocks failed", len(cids))
            return [exc] * len(cids)

    def _get_many_refused(self, router: zmq.Socket, route: bytes, peer: Peer, msg: GetMany) -> int:
        """Every Get of a GetMany told no: the node is draining, or the peer has not said hello."""
        if self.draining:
            self.metrics.inc("busy", len(msg.cids))
            code, text = ErrorCode.BUSY, "this node is shutting down; try another"
        else:
            self._refuse_log(peer, "a request before an accepted hello")
            code, text = ErrorCode.REFUSED, SAY_HELLO
        for get in msg.gets():
            self._send(router, route, Error(get.id, code, text))
        return len(msg.cids)

    def _answer(self, route: bytes, peer: Peer, msg):
        if isinstance(msg, Hello):
            return self._hello(peer, msg)
        if not peer.admitted:
            self._refuse_log(peer, "a request before an accepted hello")
            return Error(getattr(msg, "id", 0), ErrorCode.REFUSED, SAY_HELLO)
        if isinstance(msg, (Get, Have)):
            return self._read(route, peer, msg)
        if isinstance(msg, Put):
            return self._put(route, peer, msg)
        if isinstance(msg, Probe):
            return self._probe(msg)
        return Error(getattr(msg, "id", 0), ErrorCode.BAD_REQUEST, f"{type(msg).__name__} is not a request")

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
        return Welcome(self.identity.node_id, max(common), CAPS,
                       self.policy.cert if self.policy.admission == "fleet" else None, self._free())

    def _free(self) -> int | None:
        """Bytes free on the store's disk, for the Welcome: told only to a peer that proved its key."""
        try:
            fs = os.statvfs(self.store.root)
        except (AttributeError, OSError):
            return None
        return fs.f_bavail * fs.f_frsize

    def _refuse_log(self, peer: Peer, why: str) -> None:
        self.metrics.inc("refusals")
        who = peer.node or zmq.utils.z85.encode(peer.key).decode()
        last = self._refusal_logged.get(who, 0.0)
        if time.monotonic() - last > 10:   # a peer-caused warning is rate-limited, and says one safe line
            self._refusal_logged[who] = time.monotonic()
            self._refusal_logged.move_to_end(who)
            while len(self._refusal_logged) > MAX_LOGGED:
                self._refusal_logged.popitem(last=False)
            log.warning("refused %s: %s", printable(who, 80), printable(why))

    def _read(self, route: bytes, peer: Peer, msg):
        """Answer a Have or Get from the store."""
        if isinstance(msg, Have):
            return HaveReply(msg.id, tuple(self.store.has(c) for c in msg.cids))
        return self._read_block(route, peer, msg.id, msg.cid, msg.offset, msg.length)

    def _read_block(self, route: bytes, peer: Peer, rid: int, cid, offset: int = 0, length: int | None = None):
        """The Block answering a get (every block read is checked against its CID), an Error, or None: a block
        the upload limit cannot pay for now is held back until it can, while other requests are answered."""
        if self._paced and self._held_full(peer, 1):
            return self._spent(rid)   # before reading: a peer that keeps asking costs no disk or hashing
        try:
            data = self.store.get(cid)
        except Exception as exc:   # noqa: BLE001 - _answer_read says what each kind means
            data = exc
        return self._answer_read(route, peer, rid, cid, data, offset, length)

    def _answer_read(self, route: bytes, peer: Peer, rid: int, cid, data, offset: int = 0,
                     length: int | None = None):
        """_read_block's answer, given what the store gave: the block's bytes or the exception it raised."""
        if isinstance(data, Exception):
            if isinstance(data, (BlockNotFound, CorruptBlock)):
                self.metrics.inc("not_found")
                return Error(rid, ErrorCode.NOT_FOUND, f"this node does not hold {cid}")
            if isinstance(data, StoreError):
                log.error("reading %s failed: %s", cid, data)
            else:   # a bug, or an OS error from a failing card
                log.error("reading %s failed", cid, exc_info=data)
            self.metrics.inc("errors")
            return Error(rid, ErrorCode.INTERNAL, "this node failed to answer; try another")
        total = len(data)
        if offset or length is not None:
            if offset > total:
                return Error(rid, ErrorCode.BAD_REQUEST, f"offset {offset} is past the block's {total} bytes")
            end = total if length is None else min(total, offset + length)
            data = data[offset:end]
        size = len(data)
        if self._paced and self._held_full(peer, size):
            return self._spent(rid)
        wait = self.policy.upload.debit(size)
        metrics = self.metrics
        metrics["blocks_served"] = metrics.get("blocks_served", 0) + 1
        metrics["bytes_served"] = metrics.get("bytes_served", 0) + size
        reply = Block(rid, cid, offset, total, data)
        if wait <= 0:
            return reply
        self._paced.append((time.monotonic() + wait, route, peer, reply))
        self._paced_bytes += size
        peer.paced += size
        return None

    def _held_full(self, peer: Peer, size: int) -> bool:
        """Whether holding size more bytes of peer's for the upload limit would pass a bound."""
        if not self._paced:
            return False
        if not peer.paced:   # a peer with nothing held is not crowded out by others, up to a hard bound
            return self._paced_bytes + size > 2 * PACED_BYTES
        return peer.paced + size > PACED_PEER or self._paced_bytes + size > PACED_BYTES

    def _spent(self, rid: int) -> Error:
        self.metrics.inc("busy")
        return Error(rid, ErrorCode.BUSY, "this node's upload limit is spent; retry later")

    def _send_paced(self, router: zmq.Socket) -> None:
        """Send the held-back blocks whose time has come (all of them when draining: a shutdown does not wait
        for the limit)."""
        now = time.monotonic()
        while self._paced and (self._paced[0][0] <= now or self.draining):
            _, route, peer, reply = self._paced.popleft()
            self._paced_bytes -= len(reply.data)
            peer.paced -= len(reply.data)
            self._send(router, route, reply)

    def _probe(self, msg: Probe):
        """A throughput probe: filler bytes, paid from the upload limit like a block (a probe cannot get round
        the household's cap). It never makes the node wait: if the limit cannot pay for it now, BUSY (the
        prober tries again later)."""
        if not self.policy.upload.take_now(msg.size):
            self.metrics.inc("busy")
            return Error(msg.id, ErrorCode.BUSY, "the upload limit is spent; probe later")
        self.metrics.inc("probes")
        self.metrics.inc("probe_bytes", msg.size)
        return ProbeData(msg.id, memoryview(PROBE_FILLER)[:msg.size])

    def _put(self, route: bytes, peer: Peer, msg: Put):
        if self.policy.admission == "open" and peer.key not in self._writers:
            self._refuse_log(peer, "a put from a node not allowed to write")
            return Error(msg.id, ErrorCode.REFUSED, "this node does not accept writes from you")
        if self._putting >= MAX_PUTS:
            self.metrics.inc("busy")
            return Error(msg.id, ErrorCode.BUSY, "this node is busy writing; retry later")
        self._putting += 1
        self._puts.submit(self._store_put, route, msg)
        return None

    def _store_put(self, route: bytes, msg: Put) -> None:
        """In a put worker: store the block, then hand the reply to the serving thread."""
        try:
            stored = self.store.put(msg.cid, msg.data, verify=True)
            reply = PutOk(msg.id, stored > 0)
        except DecodeError as exc:
            reply = Error(msg.id, ErrorCode.BAD_REQUEST, str(exc))
        except (QuotaExceeded, StoreFull) as exc:
            reply = Error(msg.id, ErrorCode.QUOTA, str(exc))
        except StoreError as exc:
            log.error("storing %s failed: %s", msg.cid, exc)
            reply = Error(msg.id, ErrorCode.INTERNAL, "this node failed to store the block; try another")
        except BaseException:
            log.exception("storing %s failed", msg.cid)
            reply = Error(msg.id, ErrorCode.INTERNAL, "this node failed to store the block; try another")
        self._done.append((route, reply))   # the serving thread sends it and counts the put as done
        self._wake()

    def _send(self, router: zmq.Socket, route: bytes, reply) -> None:
        if isinstance(reply, PutOk) and reply.stored:
            self.metrics.inc("blocks_stored")
        frames = serialize_message(reply)
        try:
            router.send(route, _NOW_MORE)
        except zmq.Again:   # this peer's queue is full (it is not reading): it loses this reply
            self.metrics.inc("dropped")
            return
        except zmq.ZMQError as exc:   # the peer went away (ROUTER_MANDATORY): nothing to tell it
            if exc.errno == zmq.EHOSTUNREACH:
                return
            raise
        last = len(frames) - 1   # ROUTER takes the rest of a message once it has taken the first frame
        for i, frame in enumerate(frames):
            router.send(frame, _MORE if i < last else 0, copy=len(frame) < ZERO_COPY_MIN)


def _curve_or_none(node: str) -> bytes | None:
    try:
        return curve_public_of(node)
    except DecodeError:
        log.warning("write_allow: %s is not a node id; ignored", printable(node, 80))
        return None


def _joined(datas: list) -> bytes:
    return datas[0] if len(datas) == 1 else b"".join(datas)


async def serve_transport(store, identity: Identity, policy: Policy, endpoint: str, *,
                          task_status=trio.TASK_STATUS_IGNORED, context: zmq.Context | None = None,
                          more_hosts=()):
    """Bind endpoint (tcp://host:port; port 0 picks one), and the same port on each of more_hosts (the other
    addresses the `listen` setting chose), and serve until cancelled; reports (server, endpoint).

    Each server has its own ZeroMQ context unless given one: a context holds one ZAP handler."""
    own = context is None
    ctx = context or zmq.Context()
    server = TransportServer(store, identity, policy)
    zap = ctx.socket(zmq.REP)
    router = ctx.socket(zmq.ROUTER)
    thread = None
    try:
        zap.bind(ZAP_ENDPOINT)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, policy.max_payload + 128 * 1024)   # libzmq drops a peer that sends more
        router.setsockopt(zmq.SNDHWM, SNDHWM)
        router.setsockopt(zmq.RCVHWM, 1000)
        router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)   # an idle TCP connection does not hold a descriptor
        router.curve_server = True
        router.curve_secretkey = zmq.utils.z85.encode(identity.curve_secret)
        router.curve_publickey = zmq.utils.z85.encode(identity.curve_public)
        router.zap_domain = b"hearth"
        if endpoint.endswith(":0"):
            port = router.bind_to_random_port(endpoint[:-2])
            endpoint = f"{endpoint[:-2]}:{port}"
        else:
            router.bind(endpoint)
        port = endpoint.rsplit(":", 1)[1]
        for host in more_hosts:
            router.bind(f"tcp://{host}:{port}")
        failed = []
        token, ended = trio.lowlevel.current_trio_token(), trio.Event()

        def serving():
            try:
                server.run(router, zap)
            except BaseException as exc:   # reported to Trio below: the node must not run on without serving
                failed.append(exc)
                log.exception("the transport server stopped")
            finally:
                try:
                    token.run_sync_soon(ended.set)
                except trio.RunFinishedError:
                    pass
        thread = threading.Thread(target=serving, name="hearth-transport", daemon=True)
        thread.start()
        log.info("serving blocks at %s as %s", endpoint, identity.node_id)
        task_status.started((server, endpoint))
        await ended.wait()
        raise RuntimeError(f"the transport server stopped: {failed[0] if failed else 'unknown reason'}")
    finally:
        server.stop()
        if thread is not None:
            thread.join()
        server.close()
        router.close(0)
        zap.close(0)
        if own:
            ctx.term()
