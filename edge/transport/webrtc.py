"""Blocks to browsers over WebRTC data channels (aiortc), signalled in one HTTP exchange in the manner of WHEP.

The browser POSTs its SDP offer (ICE gathering complete) to the gateway's /webrtc; the node answers with its
SDP (candidates included) and a session URL the browser may DELETE. Over the data channel the page asks for
blocks by CID and checks each one against its CID itself, so it trusts no peer, this node included:

    page -> node   text    {"id": 7, "cid": "bafkrei…"}
    node -> page   text    {"id": 7, "status": 200, "size": 262144}     (or a status >= 400 and "error")
    node -> page   binary  4-byte big-endian id + up to CHUNK bytes, repeated until size bytes are sent

aiortc speaks only asyncio: everything here that touches it runs on the asyncio bridge's loop (DESIGN.md:
the bridge is the one place Trio meets asyncio); store reads go to the loop's default thread pool. ICE servers
come from the config only: with none (a LAN) aiortc must not add its public STUN default, so the list is
always passed explicitly.
"""

import asyncio
import json
import logging
import struct
import time
import uuid

from edge.errors import DecodeError
from edge.store.cid import parse_cid
from edge.store.errors import BlockNotFound, CorruptBlock, StoreError

log = logging.getLogger(__name__)

CHUNK = 16 * 1024
MAX_SESSIONS = 16
MAX_OFFER = 64 * 1024
MAX_IN_FLIGHT = 8               # requests one channel may have outstanding
HIGH_WATER = 1 << 20            # bytes queued on a channel before sending waits
SESSION_IDLE = 300.0


class SignalingError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Session:
    def __init__(self, pc):
        self.pc = pc
        self.created = time.monotonic()
        self.last = time.monotonic()
        self.blocks = 0
        self.bytes = 0


class WebRTCService:
    """Lives on the asyncio loop; the gateway reaches it through `bridge.call`."""

    def __init__(self, get_block, ice_servers=(), max_sessions: int = MAX_SESSIONS, addresses=None):
        self.get_block = get_block            # blocking: CID -> verified bytes (the store's get)
        # the LAN addresses the `listen` setting chose: the only ones offered as candidates (None: every one)
        self.addresses = None if addresses is None else frozenset(addresses)
        self.ice_servers = list(ice_servers)
        self.max_sessions = max_sessions
        self.sessions: dict[str, _Session] = {}
        self.served_blocks = 0
        self.served_bytes = 0

    def _configuration(self):
        from aiortc import RTCConfiguration, RTCIceServer
        return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in self.ice_servers])

    async def answer(self, offer_sdp: str) -> tuple[str, str]:
        """(session id, answer SDP) for a browser's offer. SignalingError with an HTTP status otherwise."""
        from aiortc import RTCPeerConnection, RTCSessionDescription
        if len(offer_sdp) > MAX_OFFER:
            raise SignalingError(413, f"an SDP offer is at most {MAX_OFFER} bytes")
        if "m=application" not in offer_sdp:
            raise SignalingError(400, "the offer has no data channel (m=application); open one before "
                                      "creating the offer")
        self._expire()
        if len(self.sessions) >= self.max_sessions:
            raise SignalingError(503, f"this node already serves {self.max_sessions} browsers over WebRTC; "
                                      "use HTTP or try again later")
        pc = RTCPeerConnection(self._configuration())
        sid = uuid.uuid4().hex
        session = _Session(pc)
        self.sessions[sid] = session

        @pc.on("datachannel")
        def on_channel(channel):
            self._serve_channel(session, channel)

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await self.close(sid)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            sdp = pc.localDescription.sdp
            if self.addresses is not None:   # before any await: aiortc's connect task has not paired them yet
                sdp = self._only_listened(pc, sdp)
        except Exception as exc:   # noqa: BLE001 - aiortc's SDP parser fails with assert, ValueError, KeyError…
            await self.close(sid)
            raise SignalingError(400, f"the SDP offer cannot be used: {exc or type(exc).__name__}") from None
        return sid, sdp

    def _only_listened(self, pc, sdp: str) -> str:
        """The answer without candidates on (or derived from) addresses the `listen` setting left out, a
        router's WAN side: neither listed to the browser nor used for ICE checks. (aioice gathers on every
        interface and has no setting for it; its candidate list is narrowed before it forms pairs.)"""
        from aioice import Candidate

        def allowed(c) -> bool:
            return c.host in self.addresses or c.related_address in self.addresses
        conn = pc.sctp.transport.transport.iceGatherer._connection
        conn._local_candidates = [c for c in conn._local_candidates if allowed(c)]
        lines = [line for line in sdp.split("\r\n") if not line.startswith("a=candidate:") or
                 allowed(Candidate.from_sdp(line[len("a="):]))]
        # the default address (aiortc's first candidate's) is no address at all when it was left out
        lines = ["c=IN IP4 0.0.0.0" if line.startswith("c=IN IP4 ") and
                 line.split()[-1] not in self.addresses else line for line in lines]
        return "\r\n".join(lines)

    async def close(self, sid: str) -> bool:
        session = self.sessions.pop(sid, None)
        if session is None:
            return False
        await session.pc.close()
        return True

    async def close_all(self):
        for sid in list(self.sessions):
            await self.close(sid)

    def _expire(self):
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.last > SESSION_IDLE:
                asyncio.ensure_future(self.close(sid))

    def _serve_channel(self, session: _Session, channel):
        in_flight = set()
        low = asyncio.Event()
        low.set()
        channel.bufferedAmountLowThreshold = HIGH_WATER // 2

        @channel.on("bufferedamountlow")
        def on_low():
            low.set()

        async def send(data):
            while channel.bufferedAmount > HIGH_WATER:
                low.clear()
                try:
                    await asyncio.wait_for(low.wait(), 5)
                except asyncio.TimeoutError:
                    pass
                if channel.readyState != "open":
                    return
            channel.send(data)

        async def handle(req_id, cid_text):
            try:
                cid = parse_cid(cid_text)
                data = await asyncio.get_running_loop().run_in_executor(None, self.get_block, cid)
            except DecodeError as exc:
                await send(json.dumps({"id": req_id, "status": 400, "error": str(exc)}))
                return
            except StoreError as exc:
                status = 404 if isinstance(exc, BlockNotFound) else 502 if isinstance(exc, CorruptBlock) else 503
                await send(json.dumps({"id": req_id, "status": status, "error": exc.args[0] if exc.args else ""}))
                return
            await send(json.dumps({"id": req_id, "status": 200, "size": len(data)}))
            prefix = struct.pack(">I", req_id)
            view = memoryview(data)
            for off in range(0, len(view), CHUNK):
                if channel.readyState != "open":
                    return
                await send(prefix + view[off:off + CHUNK].tobytes())
            session.blocks += 1
            session.bytes += len(data)
            self.served_blocks += 1
            self.served_bytes += len(data)

        @channel.on("message")
        def on_message(message):
            session.last = time.monotonic()
            try:
                if not isinstance(message, str) or len(message) > 1024:
                    raise ValueError("a request is a short JSON text message")
                req = json.loads(message)
                req_id, cid_text = int(req["id"]), str(req["cid"])
                if not 0 <= req_id < 1 << 32:
                    raise ValueError("id must fit 32 bits")
            except (ValueError, KeyError, TypeError) as exc:
                channel.send(json.dumps({"id": None, "status": 400, "error": f"bad request: {exc}"}))
                return
            if len(in_flight) >= MAX_IN_FLIGHT:
                channel.send(json.dumps({"id": req_id, "status": 429,
                                         "error": f"at most {MAX_IN_FLIGHT} requests at once"}))
                return
            task = asyncio.ensure_future(handle(req_id, cid_text))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
