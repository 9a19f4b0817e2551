"""Neighbours across NATs without a mapping: the node-to-node transport carried over WebRTC data channels.

A node that no one can dial (reach "webrtc": no public address, no port mapping) still serves its WAN
neighbours. The neighbour that wants its blocks sends a signed offer through the fleet broker
(edge/fleet/signal.py); the node answers; ICE (aiortc's aioice) finds a path with the STUN/TURN servers of
`ice_servers` (a fleet's own), punching through both homes' NATs. Then each ZeroMQ connection the fetching side
opens to a local port is carried, byte for byte, on a data channel of its own to the serving node's transport:
the very same CURVE handshake and block messages as over TCP, end to end, so a relay, the broker or the ICE
servers see nothing and admission (open or fleet) is decided by the transport as for any connection.

aiortc speaks asyncio: everything that touches it runs on the asyncio bridge's loop (DESIGN.md). The Trio side
signals (its own MQTT 5 session, client id NODE-rtc) and hands out local endpoints. Bounded: MAX_SESSIONS
WebRTC sessions, offers answered at most OFFERS_PER_MINUTE, a session with no channel open within OPEN_WITHIN
closed, idle ones after SESSION_IDLE.
"""

import asyncio
import collections
import logging
import time

import trio

from edge.bridge import BridgeClosed, TaskSet
from edge.fleet.mqtt import BrokerError, connect
from edge.fleet.signal import (SIGNAL_EXPIRY, Inbox, Signal, SignalError, new_sid, serialize_signal,
                               signal_topic)
from edge.logsafe import printable
from edge.service import Handle
from edge.transport.client import TransportError
from edge.transport.webrtc import filter_candidates, ice_server, local_networks

log = logging.getLogger(__name__)
CHUNK = 16 * 1024           # bytes per data channel message
HIGH_WATER = 1 << 20        # bytes queued on a channel before reading from the socket waits
MAX_SESSIONS = 16
SIGNAL_RATE = 50.0          # signals handled a second; past it they are dropped
MAX_PER_NODE = 2            # sessions one neighbour may hold with this node (it needs one)
OFFERS_PER_MINUTE = 30
OPEN_WITHIN = 20.0          # seconds from offer or answer until the session must be connected
SESSION_IDLE = 300.0
DIAL_TIMEOUT = 20.0         # seconds for the whole dial: offer, answer, ICE, DTLS, SCTP
CAP = "rtc"                 # what the presence record's caps say when this node serves over WebRTC


def _early(channel) -> list:
    """Keep what arrives on channel until _pipe takes over (a listener from the moment the channel exists)."""
    early = []
    channel.on("message", early.append)
    return early


class TunnelError(TransportError):
    """No WebRTC path to the neighbour (no answer through the broker, or ICE found no way)."""


class _Session:
    def __init__(self, pc, node: str):
        self.pc, self.node = pc, node
        self.last = time.monotonic()
        self.server = None      # the local listener (the dialling side)
        self.port = 0
        self.first = None       # the channel made with the offer, taken by the first local connection
        self.early = []         # what came on it before that connection
        self.channels = 0
        self.bytes = 0
        self.closed = False

    async def close(self):
        """Close once (a close makes the other side's state change, which may ask again)."""
        if not self.closed:
            self.closed = True
            if self.server is not None:
                self.server.close()
            # shielded: aiortc may be closing it already (the other side's DTLS closed), and a cancelled wait
            # here would cancel the future its own close then completes (InvalidStateError in a finalizer)
            await asyncio.shield(self.pc.close())


class Tunnels:
    """The WebRTC sessions of one node; lives on the asyncio loop."""

    def __init__(self, ice_servers, transport: tuple[str, int]):
        self.ice_servers = list(ice_servers)
        self.transport = transport            # where this node's own transport listens (host, port)
        self.sessions: dict[bytes, _Session] = {}
        self.tasks = TaskSet()
        self.counts = collections.Counter()

    def _pc(self):
        from aiortc import RTCConfiguration, RTCPeerConnection
        return RTCPeerConnection(RTCConfiguration(iceServers=[ice_server(u) for u in self.ice_servers]))

    def _expire(self):
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.last > SESSION_IDLE or s.pc.connectionState in ("failed", "closed"):
                self._drop(sid)

    def _drop(self, sid: bytes):
        session = self.sessions.pop(sid, None)
        if session is not None:
            self.tasks.spawn(session.close())

    def _room(self, node: str):
        self._expire()
        if len(self.sessions) >= MAX_SESSIONS:
            raise TunnelError(f"this node already holds {MAX_SESSIONS} WebRTC sessions")
        if sum(s.node == node for s in self.sessions.values()) >= MAX_PER_NODE:
            raise TunnelError(f"{node} already holds {MAX_PER_NODE} WebRTC sessions with this node")

    async def expire(self):
        self._expire()

    def _watch(self, sid: bytes, session: _Session):
        @session.pc.on("connectionstatechange")
        async def on_state():
            if session.pc.connectionState in ("failed", "closed"):
                self._drop(sid)
        asyncio.get_running_loop().call_later(
            OPEN_WITHIN, lambda: self._drop(sid) if session.pc.connectionState != "connected" else None)

    # the serving side -----------------------------------------------------------------------------------------

    async def answer(self, sid: bytes, node: str, offer: str) -> str:
        """The answer SDP to node's offer: each data channel it opens is joined to this node's transport."""
        from aiortc import RTCSessionDescription
        self._room(node)
        if "m=application" not in offer:
            raise TunnelError("the offer has no data channel")
        # each candidate makes this node send STUN checks there: only addresses on its own networks, and
        # public server-reflexive or relay ones when ice_servers is set (as for browsers' offers)
        offer, _, dropped = filter_candidates(offer, None, local_networks(), bool(self.ice_servers))
        self.counts["candidates dropped"] += dropped
        session = self.sessions[sid] = _Session(self._pc(), node)
        self._watch(sid, session)

        @session.pc.on("datachannel")
        def on_channel(channel):
            self.tasks.spawn(self._to_transport(session, channel))
        try:
            await session.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await session.pc.setLocalDescription(await session.pc.createAnswer())
        except Exception as exc:   # noqa: BLE001 - aiortc's SDP parser fails with assert, ValueError, KeyError...
            self._drop(sid)
            raise TunnelError(f"the offer cannot be used: {exc or type(exc).__name__}") from None
        self.counts["answered"] += 1
        return session.pc.localDescription.sdp

    async def _to_transport(self, session: _Session, channel):
        early = _early(channel)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.transport), 5)
        except (OSError, asyncio.TimeoutError) as exc:
            log.info("webrtc tunnel: cannot reach this node's transport: %s", exc)
            channel.close()
            return
        session.channels += 1
        await self._pipe(session, channel, reader, writer, early)

    # the dialling side ----------------------------------------------------------------------------------------

    async def offer(self, sid: bytes, node: str) -> str:
        """An offer to node (ICE candidates gathered); its first data channel waits for a local connection."""
        self._room(node)
        session = self.sessions[sid] = _Session(self._pc(), node)
        self._watch(sid, session)
        session.first = session.pc.createDataChannel("hearth")
        session.early = _early(session.first)
        await session.pc.setLocalDescription(await session.pc.createOffer())
        return session.pc.localDescription.sdp

    async def connect(self, sid: bytes, answer: str) -> int:
        """Take node's answer; once connected, the local port whose connections go to its transport."""
        from aiortc import RTCSessionDescription
        session = self.sessions.get(sid)
        if session is None:
            raise TunnelError("the WebRTC session was closed before the answer came")
        try:
            await session.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:   # noqa: BLE001 - as above
            self._drop(sid)
            raise TunnelError(f"the answer cannot be used: {exc or type(exc).__name__}") from None
        opened = asyncio.Event()
        session.first.on("open", opened.set)
        if session.first.readyState == "open":
            opened.set()
        try:
            await asyncio.wait_for(opened.wait(), DIAL_TIMEOUT)
        except asyncio.TimeoutError:
            self._drop(sid)
            raise TunnelError(f"ICE found no path to {session.node} within {DIAL_TIMEOUT:.0f} s") from None

        async def accepted(reader, writer):
            channel, early, session.first = session.first, session.early, None
            if channel is None or channel.readyState != "open":
                channel = session.pc.createDataChannel("hearth")
                early = _early(channel)
                opened = asyncio.Event()
                channel.on("open", opened.set)
                try:
                    await asyncio.wait_for(opened.wait(), 10)
                except asyncio.TimeoutError:
                    writer.close()
                    return
            session.channels += 1
            await self._pipe(session, channel, reader, writer, early)
        session.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        session.port = session.server.sockets[0].getsockname()[1]
        self.counts["dialled"] += 1
        return session.port

    def endpoint(self, node: str) -> int:
        """The local port of a connected session to node, or 0."""
        self._expire()
        for s in self.sessions.values():
            if s.node == node and s.port and s.pc.connectionState == "connected":
                return s.port
        return 0

    # both ---------------------------------------------------------------------------------------------------

    async def _pipe(self, session: _Session, channel, reader, writer, early: list):
        """Bytes both ways between a TCP socket and a data channel, until either side closes; early: what
        came on the channel before the socket was there (both ends of ZeroMQ greet at once)."""
        channel.remove_all_listeners("message")
        for data in early:
            if isinstance(data, bytes):
                writer.write(data)
        low = asyncio.Event()
        channel.bufferedAmountLowThreshold = HIGH_WATER // 2
        channel.on("bufferedamountlow", low.set)
        closed = asyncio.Event()

        def on_message(data):
            session.last = time.monotonic()
            if isinstance(data, bytes):
                session.bytes += len(data)
                writer.write(data)   # bounded by the transport's own windows (requests in flight)
        channel.on("message", on_message)
        channel.on("close", closed.set)

        async def outward():
            while (data := await reader.read(CHUNK)) and channel.readyState == "open":
                session.last = time.monotonic()
                while channel.bufferedAmount > HIGH_WATER:
                    low.clear()
                    await low.wait()
                channel.send(data)
                session.bytes += len(data)
        task = asyncio.ensure_future(outward())
        try:
            await asyncio.wait([task, asyncio.ensure_future(closed.wait())], return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            writer.close()
            channel.close()

    async def close_all(self):
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            await session.close()
        await self.tasks.cancel_all()


class TunnelService:
    """The Trio side: signals through the broker and hands local endpoints to fetches."""

    def __init__(self, agent, bridge, broker, fleet: str):
        self.agent, self.bridge, self.broker = agent, bridge, broker
        self.identity = agent.identity
        self.topic = signal_topic(fleet, self.identity.node_id)
        self.fleet = fleet
        transport = agent.services.get("transport").endpoint   # tcp://HOST:PORT
        host, port = transport[len("tcp://"):].rsplit(":", 1)
        host = host.strip("[]")
        self.tunnels = Tunnels(agent.config.ice_servers,
                               ("127.0.0.1" if host in ("0.0.0.0", "*") else "::1" if host == "::" else host,
                                int(port)))
        self.inbox = Inbox(self.identity.node_id)
        self.session = None
        self.waiting: dict[bytes, list] = {}     # sid -> [trio.Event, answer sdp]
        self.counts = collections.Counter()
        self._offers = collections.deque()       # times offers were answered (the last minute's)
        self.last_error = ""
        self._tokens, self._filled = 4 * SIGNAL_RATE, time.monotonic()

    def stats(self) -> dict:
        return {"connected": self.session is not None, "sessions": len(self.tunnels.sessions),
                "messages": dict(self.counts), **dict(self.tunnels.counts), "last_error": self.last_error}

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        delay = 1.0
        while True:
            try:
                async with connect(self.broker, f"{self.identity.node_id}-rtc") as session:
                    session.subscribe(self.topic)
                    self.session, delay = session, 1.0
                    async with trio.open_nursery() as nursery:
                        async for topic, payload, _ in session.messages:
                            self._take(nursery, topic, payload)
            except BrokerError as exc:
                self.last_error = str(exc)
            except Exception as exc:   # noqa: BLE001 - a bug ends this connection, never the agent
                self.last_error = printable(repr(exc))[:200]
                log.warning("webrtc signaling: the connection to %s failed: %s", self.broker, self.last_error)
            finally:
                self.session = None
            await trio.sleep(delay)
            delay = min(60.0, delay * 2)

    def _take(self, nursery, topic: str, payload: bytes) -> None:
        now = time.monotonic()   # a token a message (SIGNAL_RATE a second, bursts of 4 x that): a flood of
        # signals costs at most that many signature checks
        self._tokens = min(4 * SIGNAL_RATE, self._tokens + (now - self._filled) * SIGNAL_RATE)
        self._filled = now
        if self._tokens < 1:
            self.counts["dropped: flood"] += 1
            return
        self._tokens -= 1
        try:
            signal = self.inbox.take(topic, payload)
        except SignalError as exc:
            self.counts["dropped"] += 1
            log.debug("webrtc signal dropped: %s", exc)
            return
        if self.agent.peers.get(signal.sender) is None:
            # only a neighbour this node already knows (in a closed fleet: one whose presence carried the
            # fleet's certificate) may open a session; an answer comes from one it dialled, so one it knows
            self.counts["dropped: unknown"] += 1
            return
        if signal.kind == "answer":
            slot = self.waiting.get(signal.sid)
            if slot is not None and slot[2] == signal.sender:
                slot[1] = signal.sdp
                slot[0].set()
                self.counts["answers"] += 1
            else:
                self.counts["dropped"] += 1
            return
        now = time.monotonic()
        while self._offers and self._offers[0] < now - 60:
            self._offers.popleft()
        if len(self._offers) >= OFFERS_PER_MINUTE:
            self.counts["refused"] += 1
            return
        self._offers.append(now)
        self.counts["offers"] += 1
        nursery.start_soon(self._answer, signal)

    async def _answer(self, offer: Signal) -> None:
        """Answer one offer; whatever goes wrong ends this answer only (never the service, nor the agent)."""
        try:
            with trio.fail_after(OPEN_WITHIN):
                sdp = await self.bridge.call(self.tunnels.answer, offer.sid, offer.sender, offer.sdp)
            self._send(Signal("answer", self.identity.node_id, offer.sender, offer.sid, int(time.time()), sdp))
        except trio.TooSlowError:
            self.last_error = "answering an offer took too long"
        except Exception as exc:   # noqa: BLE001 - a refused offer, a stopped bridge, a lost broker
            self.last_error = printable(str(exc) or type(exc).__name__)[:200]
            log.info("webrtc: an offer from %s was not answered: %s", offer.sender, self.last_error)

    def _send(self, signal: Signal) -> None:
        if self.session is None:
            raise TunnelError("not connected to the fleet broker")
        self.session.publish(signal_topic(self.fleet, signal.to), serialize_signal(signal, self.identity),
                             expires=SIGNAL_EXPIRY)

    async def endpoint(self, node: str) -> str:
        """A local endpoint (tcp://127.0.0.1:PORT) whose connections reach node's transport over WebRTC: a
        session already connected, else a new one (offer and answer through the broker). TunnelError if none."""
        try:
            return await self._dial(node)
        except BridgeClosed:
            raise TunnelError("the agent is stopping") from None

    async def _dial(self, node: str) -> str:
        port = await self.bridge.call(self._endpoint, node)
        if port:
            return f"tcp://127.0.0.1:{port}"
        sid = new_sid()
        slot = self.waiting[sid] = [trio.Event(), None, node]
        t0 = time.monotonic()
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                sdp = await self.bridge.call(self.tunnels.offer, sid, node)
                self._send(Signal("offer", self.identity.node_id, node, sid, int(time.time()), sdp))
                await slot[0].wait()
                port = await self.bridge.call(self.tunnels.connect, sid, slot[1])
        except trio.TooSlowError:
            raise TunnelError(f"no WebRTC path to {node} within {DIAL_TIMEOUT:.0f} s (no answer through the "
                              "broker, or ICE found no way: set ice_servers to the fleet's STUN/TURN)") from None
        finally:
            del self.waiting[sid]
        log.info("webrtc tunnel to %s open in %.1f s", node, time.monotonic() - t0)
        return f"tcp://127.0.0.1:{port}"

    async def _endpoint(self, node: str) -> int:
        return self.tunnels.endpoint(node)


class TunnelHandle(Handle):
    def __init__(self, service: TunnelService):
        super().__init__("tunnel", service.stats)
        self.service = service

    async def endpoint(self, node: str) -> str:
        return await self.service.endpoint(node)

    async def drain(self) -> None:
        await self.service.bridge.call(self.service.tunnels.close_all)


async def serve_tunnels(agent, bridge, broker, fleet: str, *, task_status=trio.TASK_STATUS_IGNORED):
    """WebRTC across NATs as an agent service (fleet_broker and ice_servers set): reports a TunnelHandle, then
    answers offers and dials until cancelled; every session is closed on the way out."""
    service = TunnelService(agent, bridge, broker, fleet)
    try:
        task_status.started(TunnelHandle(service))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            while True:   # idle and failed sessions closed even when no one dials or offers
                await trio.sleep(60)
                await bridge.call(service.tunnels.expire)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await bridge.call(service.tunnels.close_all)
            except Exception:   # noqa: BLE001 - the bridge may have stopped first
                pass
