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

Anyone who can reach the gateway may POST an offer, so an offer is treated as hostile (issue 20, finding 20):
offers are rate-limited per client address and in all; sessions are capped per client address and in all; a
session whose data channel has not opened within OPEN_WITHIN seconds is closed (so throwaway offers cannot
hold the cap); and the offer's ICE candidates are filtered before aiortc sees them, because each candidate
makes the node send STUN checks to that address: only the HTTP client's own address and addresses on the
node's own networks are kept (any address for server-reflexive and relay candidates only when ice_servers is
set, i.e. the operator meant WebRTC to cross the Internet). Hostnames (a browser's mDNS `….local` names
included) are dropped rather than resolved; the browser's checks still reach the node, which answers them
as peer-reflexive candidates, so a dropped candidate costs no connectivity on a LAN.
"""

import asyncio
import ipaddress
import json
import logging
import struct
import time
import uuid

import trio

from edge.bridge import BridgeClosed, TaskSet
from edge.errors import DecodeError
from edge.ipld.cid import parse_cid
from edge.service import Counters, Handle
from edge.store.errors import BlockNotFound, CorruptBlock, StoreError

log = logging.getLogger(__name__)

CHUNK = 16 * 1024
MAX_SESSIONS = 16
MAX_OFFER = 64 * 1024
MAX_IN_FLIGHT = 8               # requests one channel may have outstanding
HIGH_WATER = 1 << 20            # bytes queued on a channel before sending waits
SESSION_IDLE = 300.0
MAX_PER_CLIENT = 4              # sessions one client address may hold
OPEN_WITHIN = 12.0              # seconds from the answer until the data channel must be open
OFFER_BURST = 4                 # offers one client may make at once ...
OFFER_EVERY = 10.0              # ... and then one per this many seconds
ALL_OFFERS_BURST = 16           # offers from everyone together, at once ...
ALL_OFFERS_EVERY = 1.0          # ... and then one per this many seconds
MAX_CLIENTS_TRACKED = 1024      # rate-limit entries kept (the fullest, i.e. quietest, go first)
MAX_CANDIDATES = 16             # candidates kept from one offer


def webrtc_counters(registry=None) -> Counters:
    return Counters(registry, {"blocks": ("webrtc_blocks_total", "blocks sent over WebRTC data channels"),
                               "bytes": ("webrtc_bytes_total", "block bytes sent over WebRTC data channels")})


class SignalingError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Session:
    def __init__(self, pc, client: str):
        self.pc = pc
        self.client = client
        self.created = time.monotonic()
        self.last = time.monotonic()
        self.opened = False             # a data channel opened
        self.deadline = None            # the timer that closes it if none does in time
        self.blocks = 0
        self.bytes = 0


class _Bucket:
    """A token bucket: `burst` at once, then one every `every` seconds."""

    def __init__(self, burst: int, every: float):
        self.burst, self.every = burst, every
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def full(self) -> bool:
        return self.tokens + (time.monotonic() - self.at) / self.every >= self.burst


def client_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The HTTP client's address as an address (an IPv4-mapped IPv6 one as IPv4), or None if unknown."""
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def local_networks() -> list:
    """The networks of this node's interfaces (loopback excluded: aiortc gathers no loopback candidates)."""
    import ifaddr
    nets = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                net = ipaddress.ip_network(f"{text.split('%', 1)[0]}/{ip.network_prefix}", strict=False)
            except ValueError:
                continue
            if not net.network_address.is_loopback:
                nets.append(net)
    return nets


def filter_candidates(sdp: str, client, networks, public_ok: bool) -> tuple[str, int, int]:
    """The offer with only the candidates the node may send STUN to; (sdp, kept, dropped).

    Kept: UDP candidates at an IP literal that is the client's own address or on one of `networks`; with
    public_ok (ice_servers configured) also server-reflexive and relay candidates anywhere public. Never an
    unspecified, multicast, loopback (unless it is the client's own) or reserved address, and never a
    hostname (resolving it would be a lookup on an anonymous client's behalf). When a candidate is dropped,
    `a=end-of-candidates` goes too: aioice then keeps waiting for the browser's own checks (peer-reflexive)
    instead of failing at once for want of a pair."""
    out, kept, dropped = [], 0, 0
    lines = sdp.splitlines()
    for line in lines:
        if line.startswith("a=candidate:"):
            if kept < MAX_CANDIDATES and _candidate_ok(line, client, networks, public_ok):
                kept += 1
                out.append(line)
            else:
                dropped += 1
            continue
        out.append(line)
    if dropped:
        out = [line for line in out if line.strip() != "a=end-of-candidates"]
    return "\r\n".join(out) + "\r\n", kept, dropped


def _candidate_ok(line: str, client, networks, public_ok: bool) -> bool:
    fields = line[len("a=candidate:"):].split()
    if len(fields) < 8 or fields[2].lower() != "udp" or fields[6] != "typ":
        return False
    try:
        addr = client_address(fields[4])          # None for a hostname
        port = int(fields[5])
    except ValueError:
        return False
    if addr is None or not 0 < port < 65536:
        return False
    if client is not None and addr == client:
        return True
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_reserved:
        return False
    if any(addr.version == net.version and addr in net for net in networks):
        return True
    return public_ok and fields[7] in ("srflx", "relay") and addr.is_global


def ice_server(url: str):
    """An RTCIceServer from an ice_servers entry: stun:HOST[:PORT], or turn:USER:PASSWORD@HOST[:PORT][?...]
    (a fleet's TURN server with its long-term credentials; the URL itself goes to aiortc without them)."""
    from aiortc import RTCIceServer
    scheme, _, rest = url.partition(":")
    if scheme in ("turn", "turns") and "@" in rest:
        creds, _, where = rest.rpartition("@")
        user, _, password = creds.partition(":")
        return RTCIceServer(urls=f"{scheme}:{where}", username=user, credential=password)
    return RTCIceServer(urls=url)


class WebRTCService:
    """Lives on the asyncio loop; the gateway reaches it through `bridge.call`."""

    def __init__(self, get_block, ice_servers=(), max_sessions: int = MAX_SESSIONS,
                 max_per_client: int = MAX_PER_CLIENT, open_within: float = OPEN_WITHIN, addresses=None,
                 counters: Counters | None = None):
        self.get_block = get_block            # blocking: CID -> verified bytes (the store's get)
        # the LAN addresses the `listen` setting chose: the only ones offered as candidates (None: every one)
        self.addresses = None if addresses is None else frozenset(addresses)
        self.ice_servers = list(ice_servers)
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client
        self.open_within = open_within
        self.sessions: dict[str, _Session] = {}
        self.offers: dict[str, _Bucket] = {}  # per client address
        self.all_offers = _Bucket(ALL_OFFERS_BURST, ALL_OFFERS_EVERY)
        self.counters = counters if counters is not None else webrtc_counters()   # written on the loop only
        self.refused = {"rate": 0, "cap": 0, "unopened": 0, "candidates": 0}
        self.tasks = TaskSet()                # closes and block answers running on the loop

    def _configuration(self):
        from aiortc import RTCConfiguration
        return RTCConfiguration(iceServers=[ice_server(u) for u in self.ice_servers])

    def _rate_ok(self, client: str) -> bool:
        bucket = self.offers.get(client)
        if bucket is None:
            if len(self.offers) >= MAX_CLIENTS_TRACKED:
                # forget the clients that are back to a full bucket (they lose nothing); if none is, the
                # table is full of active offerers and a new one waits
                for key in [k for k, b in self.offers.items() if b.full()]:
                    del self.offers[key]
                if len(self.offers) >= MAX_CLIENTS_TRACKED:
                    return False
            bucket = self.offers[client] = _Bucket(OFFER_BURST, OFFER_EVERY)
        return bucket.take() and self.all_offers.take()

    async def answer(self, offer_sdp: str, peer: str = "") -> tuple[str, str]:
        """(session id, answer SDP) for a browser's offer; peer is the HTTP client's address. SignalingError
        with an HTTP status otherwise."""
        from aiortc import RTCPeerConnection, RTCSessionDescription
        if len(offer_sdp) > MAX_OFFER:
            raise SignalingError(413, f"an SDP offer is at most {MAX_OFFER} bytes")
        if "m=application" not in offer_sdp:
            raise SignalingError(400, "the offer has no data channel (m=application); open one before "
                                      "creating the offer")
        client = client_address(peer)
        key = str(client) if client is not None else ""
        if isinstance(client, ipaddress.IPv6Address) and not client.is_link_local:
            key = str(ipaddress.ip_network(f"{client}/64", strict=False))   # one host holds a whole /64
        if not self._rate_ok(key):
            self.refused["rate"] += 1
            raise SignalingError(429, "too many WebRTC offers from this address; wait a few seconds before "
                                      "trying again (the player falls back to HTTP meanwhile)")
        self._expire()
        if len(self.sessions) >= self.max_sessions:
            self.refused["cap"] += 1
            raise SignalingError(503, f"this node already serves {self.max_sessions} browsers over WebRTC; "
                                      "use HTTP or try again later")
        if sum(1 for s in self.sessions.values() if s.client == key) >= self.max_per_client:
            self.refused["cap"] += 1
            raise SignalingError(503, f"this address already holds {self.max_per_client} WebRTC sessions; "
                                      "close one (DELETE its session URL) or use HTTP")
        offer_sdp, kept, dropped = filter_candidates(offer_sdp, client, local_networks(), bool(self.ice_servers))
        if dropped:
            self.refused["candidates"] += dropped
            log.debug("dropped %d of the %d ICE candidates in an offer from %s", dropped, kept + dropped, key)
        pc = RTCPeerConnection(self._configuration())
        sid = uuid.uuid4().hex
        session = _Session(pc, key)
        self.sessions[sid] = session
        session.deadline = asyncio.get_running_loop().call_later(self.open_within, self._unopened, sid)

        @pc.on("datachannel")
        def on_channel(channel):
            session.opened = True
            if session.deadline is not None:
                session.deadline.cancel()
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

    def _unopened(self, sid: str):
        session = self.sessions.get(sid)
        if session is not None and not session.opened:
            self.refused["unopened"] += 1
            self._drop(sid)

    def _drop(self, sid: str):
        """Forget a session at once (so it stops counting against the caps) and close it in the background."""
        session = self.sessions.pop(sid, None)
        if session is not None:
            if session.deadline is not None:
                session.deadline.cancel()
            self.tasks.spawn(session.pc.close())

    async def close(self, sid: str) -> bool:
        session = self.sessions.pop(sid, None)
        if session is None:
            return False
        if session.deadline is not None:
            session.deadline.cancel()
        await session.pc.close()
        return True

    async def close_all(self):
        """Close every session, then cancel what still runs for them (answers, closes in the background)."""
        for sid in list(self.sessions):
            await self.close(sid)
        await self.tasks.cancel_all()

    def _expire(self):
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.last > SESSION_IDLE or (not s.opened and now - s.created > self.open_within):
                self._drop(sid)

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
            self.counters.inc("blocks")
            self.counters.inc("bytes", len(data))

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
            task = self.tasks.spawn(handle(req_id, cid_text))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)


class WebRTCHandle(Handle):
    def __init__(self, bridge, service: WebRTCService):
        super().__init__("webrtc")
        self.bridge = bridge
        self.service = service

    def stats(self) -> dict:
        s = self.service
        return {"sessions": len(s.sessions), **s.counters.values(), "refused": dict(s.refused)}

    async def drain(self) -> None:
        """Close every browser's session (its page falls back to HTTP) and cancel what runs for them."""
        await self.bridge.call(self.service.close_all)


async def serve_webrtc(bridge, service: WebRTCService, *, task_status=trio.TASK_STATUS_IGNORED):
    """The WebRTC sessions as an agent service (the gateway signals them): reports a WebRTCHandle, and closes
    every session on the way out, the drain's work if the agent's deadline cut it."""
    try:
        task_status.started(WebRTCHandle(bridge, service))
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await bridge.call(service.close_all)
            except BridgeClosed:   # past the deadline the bridge may stop first: it cancels what runs there
                pass
