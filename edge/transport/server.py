"""serve_transport: answer neighbours' requests for blocks over ZeroMQ ROUTER with CURVE encryption.

Every connection is CURVE-encrypted with the node's own key. A ZAP handler records each peer's transport key
(as the messages' User-Id); a peer's Hello must name the node id that key belongs to, and in fleet mode carry
a certificate from the fleet key. Requests from a peer that has not been admitted get REFUSED. Each peer has a
token bucket: a peer over its rate gets BUSY at once, so it cannot slow the others. Malformed frames get a
BAD_REQUEST reply (or are dropped when not even an id can be read); nothing a peer sends stops the server.

One thread owns the ROUTER and ZAP sockets and answers reads (Have, Get) itself, a batch of waiting requests
per wake-up: a request costs a parse, a store read and a send, with no hop between threads or tasks (the Trio
version spent ~0.2 ms a request on its scheduler alone). A block the upload limit cannot pay for yet is held
back (edge/transport/accounting.py bounds how much) and sent when it can be, while hellos, Haves and other
blocks go on being answered. How each request is answered is edge/transport/requests.py; this module is the
socket loop and its life: Trio starts the thread, reads its counters through the handle, drains and stops it.

A connection must finish its handshake within HANDSHAKE_MS. Times come from one clock (time.monotonic unless
a test passes its own), so bounds that depend on time can be tested by moving the clock.
"""

import collections
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import trio
import zmq
import zmq.utils.z85

from edge.errors import DecodeError
from edge.identity import Identity, curve_public_of
from edge.logsafe import printable
from edge.service import Counters, Handle
from edge.transport.accounting import Held, PeerBook, Policy, transport_counters
from edge.transport.pieces import ReadMemory
from edge.transport.requests import Answering
from edge.transport.zmqtrio import _NOW_MORE, ZERO_COPY_MIN, keep_block_buffers
from edge.wire import PutOk, serialize_message

log = logging.getLogger(__name__)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
RECV_BATCH = 64        # requests (a GetMany counts each block) taken per wake-up before the other sockets get a look
PUT_THREADS = 2        # block writes (fsync) in worker threads, sized for a 2-core box
SNDHWM = 256           # replies queued for one peer; a peer that does not read them loses the rest
POLL_MS = 500          # the serving thread re-checks for a stop at least this often
HANDSHAKE_MS = 5000    # a connection that has not finished its CURVE handshake by then is closed
STOP_WITHIN = 5.0      # seconds the serving thread (then the put workers) may take to stop once told to
_MORE = int(zmq.SNDMORE)   # a plain int: enum arithmetic costs µs


class TransportServer(Answering):
    """The serving thread's state and work. Everything but drain/stop runs in that thread."""

    def __init__(self, store, identity: Identity, policy: Policy, counters: Counters | None = None,
                 clock=time.monotonic, pieces=None):
        self.store = store
        self.pieces = pieces                   # the PieceStore of pieces held for neighbours (None: holds none)
        self.moved = None                      # (sender, Moved) -> None, thread-safe: the owner's repair hears it
        self._epochs: collections.OrderedDict = collections.OrderedDict()   # auditor key -> (secret, next commit, used)
        self.identity = identity
        self.policy = policy
        self.clock = clock
        self.metrics = counters if counters is not None else transport_counters()
        self.book = PeerBook(policy.burst, self.metrics, clock)
        self.held = Held()
        self.draining = False
        self.streams: tuple = ()               # this node's signed stream entries (edge/discovery/streams.py)
        self.loops = 0                         # serving-loop turns finished (drain waits for one more)
        self.turn_began: float | None = None   # when the turn being worked on began (None: waiting in poll)
        self._stopping = False
        self._puts = ThreadPoolExecutor(max_workers=PUT_THREADS, thread_name_prefix="hearth-put")
        self._putting = 0                      # puts queued or running
        self._done: collections.deque = collections.deque()   # (route, reply) from the put workers
        self._late: collections.deque = collections.deque()   # (route, reply) of work done on the agent's side
        self.repairing = None                  # (sender, RepairPiece, reply) -> None: the new holder's repairs
        self._operators: collections.OrderedDict = collections.OrderedDict()   # node -> operator its Hello declared
        self._whole: collections.OrderedDict = collections.OrderedDict()   # co-holders' whole reads (pieces.py)
        self._reads = ReadMemory()   # which blocks of each piece reads touched, per time bucket
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
        while self.loops <= turn or self._putting or self.held:
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
        return 0.0 if began is None else max(0.0, self.clock() - began)

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
            if self.held.queue:
                timeout = min(timeout, max(0, int((self.held.next_at() - self.clock()) * 1000) + 1))
            ready = dict(poller.poll(timeout))
            self.turn_began = self.clock()
            if self._wake_r in ready:
                self._drain_wakeups()
            if zap in ready:
                self._serve_zap(zap)
            while self._done:
                self._send(router, *self._done.popleft())
                self._putting -= 1
            while self._late:   # not puts: a repair's answer (edge/protection/newholder.py) does not hold a drain
                self._send(router, *self._late.popleft())
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

    def _send_paced(self, router: zmq.Socket) -> None:
        """Send the held-back blocks whose time has come (all of them when draining: a shutdown does not wait
        for the limit)."""
        if not self.held.queue:   # each turn: the common case costs no call
            return
        now = self.clock()
        later = []
        for route, peer, reply, paid in self.held.due(now, everything=self.draining):
            if not paid and not self.draining:   # its lane's turn: pay now, or wait on (a rate lowered since)
                wait = peer.upload.debit_within(len(reply.data))
                if wait is None or wait > 0:
                    later.append((now + (peer.upload.behind() if wait is None else wait), route, peer, reply,
                                  wait is not None))
                    continue
            self._send(router, route, reply)
        for when, route, peer, reply, paid in later:
            self.held.hold(when, route, peer, reply, paid)

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


class TransportHandle(Handle):
    """The running transport: its endpoint, its figures, its drain; the watchdog reads stuck_for."""

    def __init__(self, server: TransportServer, endpoint: str):
        super().__init__("transport")
        self.server = server
        self.endpoint = endpoint

    def stats(self) -> dict:
        """The counters by their short names (`hearth status` shows them as "served"), and the server's state."""
        s = self.server
        return {**s.metrics.values(), "peers": len(s.book), "held": len(s.held.queue), "held_bytes": s.held.bytes,
                "puts": s._putting, "draining": s.draining}

    async def drain(self) -> None:
        await self.server.drain()

    def stuck_for(self) -> float:
        return self.server.stuck_for()


async def serve_transport(store, identity: Identity, policy: Policy, endpoint: str, *,
                          task_status=trio.TASK_STATUS_IGNORED, context: zmq.Context | None = None,
                          more_hosts=(), counters: Counters | None = None, clock=time.monotonic, pieces=None):
    """Bind endpoint (tcp://host:port; port 0 picks one), and the same port on each of more_hosts (the other
    addresses the `listen` setting chose), and serve until cancelled; reports a TransportHandle. It counts in
    counters (accounting.transport_counters(registry), so the agent's registry has them) when given. With pieces
    (a PieceStore, edge/store/pieces.py) it holds pieces of neighbours' protected pins and answers about them.

    Each server has its own ZeroMQ context unless given one: a context holds one ZAP handler. On the way out the
    serving thread is told to stop and joined from a worker thread, for at most STOP_WITHIN seconds: a thread
    stuck on a disk that does not answer is left behind (a daemon thread: the process still exits), with its
    sockets, and an error line says so; the Trio thread never waits on it."""
    own = context is None
    keep_block_buffers()
    ctx = context or zmq.Context()
    server = TransportServer(store, identity, policy, counters, clock, pieces)
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
        task_status.started(TransportHandle(server, endpoint))
        await ended.wait()
        raise RuntimeError(f"the transport server stopped: {failed[0] if failed else 'unknown reason'}")
    finally:
        server.stop()
        with trio.CancelScope(shield=True):   # the way out runs even when cancelled, bounded
            stopped = await _stopped(thread, server)
        if stopped:
            router.close(0)
            zap.close(0)
            if own:
                ctx.term()


async def _stopped(thread: threading.Thread | None, server: TransportServer) -> bool:
    """Join the serving thread, then the put workers, each from a worker thread for at most STOP_WITHIN seconds;
    False (and an error line) when one did not stop: its sockets and pipe are then left open."""
    if thread is not None:
        await trio.to_thread.run_sync(thread.join, STOP_WITHIN)
        if thread.is_alive():
            log.error("the transport's serving thread did not stop within %g s (a read that does not return: a "
                      "failing disk?); leaving it behind", STOP_WITHIN)
            return False
    with trio.move_on_after(STOP_WITHIN) as waited:
        await trio.to_thread.run_sync(server.close, abandon_on_cancel=True)
    if waited.cancelled_caught:
        log.error("a block write did not finish within %g s (a failing disk?); leaving it behind", STOP_WITHIN)
        return False
    return True
