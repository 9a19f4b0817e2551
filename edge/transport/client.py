"""open_client: talk to one neighbour over ZeroMQ DEALER with CURVE; requests are pipelined and matched by id.

The server's CURVE key comes from its node id, so a client reaches the node it means or no one: an impostor
cannot finish the handshake. A client with a fleet certificate also wants the server's: a fleet node talks to
members only. What a client takes in is bounded: libzmq drops a server whose message is over max_frame (plus
the body), and at most RCVHWM messages wait to be read.
"""

import collections
import itertools
import time
from contextlib import asynccontextmanager

import trio
import zmq
import zmq.utils.monitor
import zmq.utils.z85

from edge.errors import DecodeError, EdgeError, first_error
from edge.fleet.certificates import CertificateError, check_certificate
from edge.identity import Identity, curve_public_of
from edge.logsafe import printable
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.kernels import sha256_many, sha256_spans
from edge.transport.piececlient import PieceRequests
from edge.transport.zmqtrio import ZERO_COPY_MIN, TrioSocket, keep_block_buffers
from edge.wire import (MAX_BODY, MAX_GET_MANY, Block, Blocks, Error, ErrorCode, Get, GetMany, Have, HaveReply, Hello,
                       Probe, ProbeData, Put, PutOk, Welcome, parse_message, serialize_message)
from edge.wire.messages import MAX_PAYLOAD

RCVHWM = 32   # messages a client lets wait unread (a fetch keeps up to 32 requests in flight)
RECEIVE_BATCH = 16   # messages the receiving task takes in one wake (each wake costs ~50 us of a 2-core box's CPU)
# libzmq retries a connection that was refused or lost every RECONNECT_IVL (100 ms) for as long as the socket
# lives; each try is a socket, a connect and a wakeup of the agent's Trio thread (the socket's descriptor is
# signalled). A node announced by the fleet that never answers costs a probe's whole timeout of them (with 1,000
# such nodes in its region that was most of an idle agent's CPU: benchmarks/fleet_scale.py). The wait doubles
# after each try up to this (milliseconds): the first retry still comes at once, a neighbour that comes back
# is found within a second, and a silent address costs a handful of tries a probe instead of twenty.
RECONNECT_MAX = 1000


class TransportError(EdgeError):
    """A neighbour could not be reached, refused, or answered wrongly."""


class PeerRefused(TransportError):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.name.lower()}: {printable(message)}")   # the peer's text: one safe line
        self.code = code


class NotInFleet(TransportError):
    """The server did not prove it is a member of the client's fleet (no certificate in its Welcome, or one
    that does not admit it)."""


class Client(PieceRequests):
    """Requests to one neighbour; those about pieces of protected pins are edge/transport/piececlient.py's."""

    def __init__(self, sock: TrioSocket, timeout: float, server_node: str = "", node: str = ""):
        self.sock = sock
        self.timeout = timeout
        self.server_node = server_node   # who the server is (its CURVE key proved it)
        self.identity_node = node        # who this client is
        self._ids = itertools.count(1)
        self._waiting: dict[int, object] = {}   # id -> a function taking the reply
        self.welcome: Welcome | None = None

    async def _receive_loop(self):
        while True:
            batch = [await self.sock.recv_views()]   # a large block is not copied out of libzmq's buffer
            while len(batch) < RECEIVE_BATCH:        # and what else has arrived, taken in the same wake
                more = self.sock.recv_views_nowait()
                if more is None:
                    break
                batch.append(more)
            blocks = []
            for frames in batch:
                try:
                    msg = parse_message(frames)
                except DecodeError:
                    continue   # a reply we cannot read cannot be matched either; its request will time out
                if type(msg) is Blocks:   # each entry answers the GetMany request with its id (its CID is checked)
                    blocks.append(msg)
                    continue
                deliver = self._waiting.get(getattr(msg, "id", 0))
                if deliver is not None:
                    deliver(msg)
            if blocks:
                self._take_all_blocks(blocks)

    def _take_all_blocks(self, replies: list) -> None:
        """The Blocks replies that arrived together. Those of one block each (a large block travels alone) are
        hashed in one native call, so the hashing kernel can take them two at a time (native/sha256_x2.c);
        each reply then goes to _take_blocks with its digest."""
        alone = [reply.data for reply in replies if len(reply.ids) == 1]
        sums = iter(sha256_many(alone)) if alone else None
        for reply in replies:
            self._take_blocks(reply, next(sums) if len(reply.ids) == 1 else None)

    def _take_blocks(self, msg: Blocks, digest: bytes | None = None) -> None:
        """Hand each entry of a Blocks reply to the request waiting for its id. The SHA2-256 of every entry is
        taken in one native pass over the payload (GIL released), or given (digest, for a reply of one block);
        when the entries answer one GetMany of a get_many in order, their digests are compared with what it
        asked for in one comparison and the blocks handed over together (per-block Python was most of a
        pipelined 1 KiB block's client CPU)."""
        ids, sizes, data = msg.ids, msg.sizes, msg.data
        if len(ids) == 1:
            parts, sums = [data], digest
        else:
            ends = list(itertools.accumulate(sizes))
            sums = sha256_spans(data, ends) if 0 not in sizes else None
            parts = [data[a:b] for a, b in zip([0, *ends], ends)]
            if type(data) is memoryview:   # a small block kept (a DAG-PB node) does not keep a large frame
                parts = [bytes(p) if len(p) < ZERO_COPY_MIN else p for p in parts]
        window = self._waiting.get(ids[0])
        if sums is not None and type(window) is _Window and window.take(ids, parts, sums):
            return
        for n, rid in enumerate(ids):
            deliver = self._waiting.get(rid)
            if deliver is not None:
                deliver(_Entry(rid, parts[n], sums[32 * n:32 * n + 32] if sums is not None else None))

    async def request(self, make, *, rid: int | None = None):
        """Send make(id) and wait for the reply with that id (Hello and its answers carry id 0)."""
        rid = next(self._ids) if rid is None else rid
        msg = make(rid)
        slot = [trio.Event(), None]

        def deliver(reply):
            slot[1] = reply
            slot[0].set()
        self._waiting[rid] = deliver
        try:
            await self.sock.send_multipart(serialize_message(msg))
            with trio.move_on_after(self.timeout) as scope:
                await slot[0].wait()
            if scope.cancelled_caught:
                raise TransportError(f"no answer within {self.timeout:g} s")
        finally:
            del self._waiting[rid]
        reply = slot[1]
        if isinstance(reply, Error):
            raise PeerRefused(reply.code, reply.message)
        return reply

    async def hello(self, identity: Identity, cert: bytes | None = None, caps=(), operator: str = "") -> Welcome:
        reply = await self.request(lambda rid: Hello(identity.node_id, caps=tuple(caps), cert=cert,
                                                     operator=operator), rid=0)
        if not isinstance(reply, Welcome):
            raise TransportError(f"expected a welcome, got {type(reply).__name__}")
        self.welcome = reply
        return reply

    async def have(self, cids) -> tuple[bool, ...]:
        reply = await self.request(lambda rid: Have(rid, tuple(cids)))
        if not isinstance(reply, HaveReply) or len(reply.have) != len(cids):
            raise TransportError("a malformed answer to have")
        return reply.have

    async def get(self, cid: CID) -> bytes:
        """The block's bytes, checked against its CID (a peer that lies gets a TransportError)."""
        data = _checked(cid, await self.request(lambda rid: Get(rid, cid)))
        return data if type(data) is bytes else bytes(data)

    async def get_many(self, cids, *, depth: int = 32):
        """Yield the bytes of each of cids, in order, keeping up to depth requests in flight; each block is
        checked as get checks it, and a refusal or a lie ends the iteration with get's errors. A block that came
        in a large frame is yielded as a read-only memoryview of it (bytes-like, not copied again).

        cids may be any iterable; it is read lazily, as requests are sent, so a caller can change what comes
        next while blocks arrive (a fetch that moves to where a reader waits). One task drives the window, woken
        once for however many replies arrived. A node that lists "getmany" is asked for up to half the window in
        one GetMany whenever that much of the window is free, and sends small blocks back several to a message:
        pipelined small blocks cost a fraction of one get each, on both sides."""
        source = iter(cids)
        many = self.welcome is not None and "getmany" in self.welcome.caps
        chunk = max(1, min(MAX_GET_MANY, depth // 2)) if many else 1
        more = True
        window = _Window()
        ready, waiting = window.ready, self._waiting
        order: collections.deque = collections.deque()   # (id, cid) in flight, oldest first
        try:
            while True:
                while more and depth - len(order) >= (chunk if order else 1):
                    room = min(chunk, depth - len(order))
                    batch = list(itertools.islice(source, room))
                    if len(batch) < room:
                        more = False
                    if not batch:
                        break
                    first = next(self._ids)
                    for _ in range(len(batch) - 1):   # consecutive ids: GetMany numbers its entries from first
                        next(self._ids)
                    for i, cid in enumerate(batch):
                        waiting[first + i] = window
                        order.append((first + i, cid))
                    window.asked(first, batch, order[0][0])
                    request = GetMany(first, tuple(batch)) if len(batch) > 1 else Get(first, batch[0])
                    await self.sock.send_multipart(serialize_message(request))
                if not order:
                    return
                rid, cid = order[0]
                if rid not in ready:
                    window.wake = trio.Event()
                    with trio.move_on_after(self.timeout) as scope:
                        await window.wake.wait()
                    if scope.cancelled_caught:
                        raise TransportError(f"no answer within {self.timeout:g} s")
                    continue
                order.popleft()
                del waiting[rid]
                reply = ready.pop(rid)
                if type(reply) is bytes or type(reply) is memoryview:   # checked as it arrived (_Window.take)
                    yield reply
                    continue
                if isinstance(reply, Error):
                    raise PeerRefused(reply.code, reply.message)
                yield _checked(cid, reply)
        finally:
            for rid, _ in order:
                waiting.pop(rid, None)

    async def probe(self, size: int) -> float:
        """Bytes a second this neighbour sends us: the time for size bytes of filler, one round trip included
        (nodes whose Welcome lists "probe")."""
        t0 = trio.current_time()
        reply = await self.request(lambda rid: Probe(rid, size))
        if not isinstance(reply, ProbeData) or len(reply.data) != size:
            raise TransportError("a malformed answer to probe")
        return size / max(trio.current_time() - t0, 1e-6)

    async def put(self, cid: CID, data: bytes) -> bool:
        reply = await self.request(lambda rid: Put(rid, cid, data))
        if not isinstance(reply, PutOk):
            raise TransportError("a malformed answer to put")
        return reply.stored


class _Window:
    """What one get_many has asked for and what has come back: ready maps a request id to its reply, or to the
    block's bytes once checked (take); asked records each request's digests, joined, for take to compare with."""

    __slots__ = ("ready", "requests", "wake")

    def __init__(self):
        self.ready: dict[int, object] = {}
        self.requests: list[tuple[int, int, bytes | None]] = []   # (first id, how many, their digests or None)
        self.wake = trio.Event()

    def __call__(self, reply) -> None:   # one reply (a Block, an Error, an entry): checked when its turn comes
        self.ready[reply.id] = reply
        self.wake.set()

    def asked(self, first: int, cids: list, oldest: int) -> None:
        """A request for cids under ids first, first + 1, ...; oldest: the oldest id still in flight (requests
        wholly before it are done)."""
        self.requests = [r for r in self.requests if r[0] + r[1] > oldest]
        digests = [c.multihash[2:] for c in cids if c.multihash[:2] == b"\x12\x20"]
        self.requests.append((first, len(cids), b"".join(digests) if len(digests) == len(cids) else None))

    def take(self, ids: tuple, parts: list, sums: bytes) -> bool:
        """The entries of a Blocks reply, if they answer consecutive entries of one sha2-256 request of this
        window and every digest (sums, 32 bytes each) is the one asked for: kept as checked, True. Otherwise
        False, nothing kept: the caller hands over each entry, to be checked on its own."""
        start, count = ids[0], len(ids)
        for first, n, digests in self.requests:
            if first <= start and start + count <= first + n:
                break
        else:
            return False
        if digests is None or ids != tuple(range(start, start + count)) or \
                sums != digests[32 * (start - first):32 * (start - first + count)]:
            return False
        self.ready.update(zip(ids, parts))
        self.wake.set()
        return True


class _Entry:
    """One block of a Blocks reply: it answers the CID its id asked for (a plain object: a dataclass per block
    costs µs that count when blocks are small); sha256: the SHA2-256 of data when the receiver hashed it with
    the message's other blocks, else None."""

    __slots__ = ("id", "data", "sha256")

    def __init__(self, rid: int, data, sha256: bytes | None = None):
        self.id, self.data, self.sha256 = rid, data, sha256


def _checked(cid: CID, reply) -> bytes:
    """The bytes of a Block, or of an entry of a Blocks reply, answering a get of cid, checked against cid."""
    if type(reply) is _Entry:
        if reply.sha256 is not None and cid.multihash[:2] == b"\x12\x20":   # hashed already: compare
            if reply.sha256 != cid.multihash[2:]:
                raise TransportError(f"the peer sent bytes for {cid} that do not match it")
            return reply.data
    elif not isinstance(reply, Block) or reply.cid != cid or reply.offset != 0 or len(reply.data) != reply.total:
        raise TransportError(f"a malformed answer to get {cid}")
    if not cid.matches(reply.data):
        raise TransportError(f"the peer sent bytes for {cid} that do not match it")
    return reply.data


@asynccontextmanager
async def open_client(identity: Identity, endpoint: str, server_node: str, *, cert: bytes | None = None,
                      timeout: float = 5.0, context: zmq.Context | None = None, hello: bool = True,
                      max_frame: int = MAX_PAYLOAD, fleet_key: bytes | None = None, operator: str = ""):
    """A connected, greeted Client for the node server_node at endpoint.

    With a fleet certificate (cert) the server must prove it is in the same fleet: its Welcome carries a
    certificate the fleet key (fleet_key, else the one cert names) signed for server_node, or NotInFleet.
    A message over max_frame bytes of payload makes libzmq drop the connection (the request times out).
    operator: the operator key this node declares in its Hello ("": none)."""
    fleet = fleet_key or (_fleet_of(cert) if cert else None)
    keep_block_buffers()
    ctx = context or zmq.Context.instance()
    try:   # a node id that names no key, an endpoint libzmq refuses, no descriptor left: this client fails
        raw = _dealer(ctx, identity, server_node, max_frame)
    except (DecodeError, zmq.ZMQError) as exc:
        raise TransportError(f"cannot talk to {printable(server_node, 60)}: {exc}") from None
    try:
        raw.connect(endpoint)
    except zmq.ZMQError as exc:
        raw.close(0)
        raise TransportError(f"cannot connect to {printable(endpoint)}: {exc}") from None
    sock = TrioSocket(raw)
    client = Client(sock, timeout, server_node, identity.node_id)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._receive_loop)
            if hello:
                welcome = await client.hello(identity, cert, operator=operator)
                if fleet is not None:
                    try:
                        check_certificate(welcome.cert or b"", fleet, server_node)
                    except CertificateError as exc:
                        raise NotInFleet(f"it is not a member of this fleet: {exc}") from None
            yield client
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        sock.close()


@asynccontextmanager
async def open_clients(identity: Identity, dials: dict, *, cert: bytes | None = None, timeout: float = 5.0,
                       on_fail=None):
    """Clients of several nodes dialled at once: dials is {node id: async () -> its endpoint}; yields {node id:
    Client} of those that answered, once every one has answered or failed, so nodes that are gone cost one
    timeout, not one each. on_fail(node, exc) for each that did not answer (TransportError, PeerRefused); one
    that fails later is dropped from the dict (the caller's requests to it fail as to any node gone)."""
    clients = {}
    pending = [len(dials)]
    settled = trio.Event()
    if not dials:
        settled.set()

    def settle():
        pending[0] -= 1
        if pending[0] == 0:
            settled.set()

    async def hold(node, endpoint_of):
        counted = False
        try:
            endpoint = await endpoint_of()
            async with open_client(identity, endpoint, node, cert=cert, timeout=timeout) as client:
                clients[node] = client
                counted = True
                settle()
                await trio.sleep_forever()
        except (TransportError, PeerRefused) as exc:
            clients.pop(node, None)
            if on_fail is not None:
                on_fail(node, exc)
        finally:
            if not counted:
                settle()
    try:
        async with trio.open_nursery() as nursery:
            for node, endpoint_of in dials.items():
                nursery.start_soon(hold, node, endpoint_of)
            await settled.wait()
            yield clients
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def _fleet_of(cert: bytes) -> bytes | None:
    """The fleet key a certificate names (the client's own: checked when the agent started)."""
    try:
        value = cbor.loads(cert)
    except DecodeError:
        return None
    fleet = value.get("fleet") if isinstance(value, dict) else None
    return fleet if isinstance(fleet, bytes) and len(fleet) == 32 else None


def _dealer(ctx: zmq.Context, identity: Identity, server_node: str, max_frame: int = MAX_PAYLOAD) -> zmq.Socket:
    """A DEALER socket that speaks CURVE as identity to the node server_node (and no one else), taking in at
    most RCVHWM messages of at most max_frame bytes of payload (and a body) each."""
    server_key = curve_public_of(server_node)   # a DecodeError here, before any socket exists
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame + MAX_BODY)   # libzmq drops a server that sends more at once
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX)
    sock.curve_secretkey = zmq.utils.z85.encode(identity.curve_secret)
    sock.curve_publickey = zmq.utils.z85.encode(identity.curve_public)
    sock.curve_serverkey = zmq.utils.z85.encode(server_key)
    return sock


_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | \
    zmq.EVENT_HANDSHAKE_FAILED_AUTH


def handshake_fails(identity: Identity, endpoint: str, server_node: str, wait: float = 1.5) -> bool:
    """Blocking: True when the CURVE handshake with the key of server_node fails at endpoint (someone else
    answers there: an impostor). False when it succeeds, or when nothing is decided within wait seconds (a node
    that is down, or busy, is not called an impostor)."""
    sock = _dealer(zmq.Context.instance(), identity, server_node)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            if monitor.poll(int(left * 1000) + 1):
                event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
                return bool(event & _HANDSHAKE_FAILED)
        return False
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
