"""mDNS: announce `_hearth._tcp.local.` and browse for it, with zeroconf's asyncio API behind the bridge.

TXT records: id (node id), v (protocol version), tp (transport port), caps (comma list). Nothing else: anyone
on the LAN reads them (free space travels in the authenticated Welcome instead; a `free` an older node still
announces is ignored). Only the interfaces and addresses the `listen` setting chose are answered on and listed.

Everything in an announcement is the sender's to choose, so it is all checked here, before anything else sees
it: the node id decodes to a valid Ed25519 point in canonical form, the port and addresses are ones a neighbour
can have, the TXT is small. A record that fails is dropped, with a rate-limited log line. Resolutions run a few
at a time and the names remembered are bounded: a flood of announcements costs a bounded amount of work.
"""

import collections
import ipaddress
import logging
import socket
import time

import trio
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edge.bridge import BridgeClosed, TaskSet
from edge.discovery.peers import MAX_PEERS, MAX_ROUTES, PeerInfo
from edge.errors import DecodeError
from edge.identity import check_node_id
from edge.logsafe import printable
from edge.service import Handle

log = logging.getLogger(__name__)
SERVICE = "_hearth._tcp.local."
MAX_TXT = 512          # bytes of TXT keys and values a Hearth record may carry (ours is ~110)
MAX_NAMES = 4 * MAX_PEERS   # announcement names remembered (for their goodbyes)
RESOLVING = 8          # announcements resolved at once ...
MAX_PENDING = 256      # ... and waiting to be; more are dropped until the queue drains
PROBING = 16           # sightings probed at once (the prober's rounds reach the rest)
DROP_LOG_EVERY = 10.0  # seconds between log lines about dropped announcements


def txt_record(node: str, port: int, caps, version: int = 1) -> dict:
    return {"id": node, "v": str(version), "tp": str(port), "caps": ",".join(caps)}


def parse_txt(props: dict, addresses: list[str]) -> PeerInfo | None:
    """A PeerInfo from an announcement's TXT and addresses; None if it is not a well-formed Hearth record."""
    try:
        return check_record(props, addresses)
    except DecodeError:
        return None


def check_record(props: dict, addresses: list[str]) -> PeerInfo:
    """The PeerInfo of an announcement, every field checked; DecodeError saying what is wrong otherwise."""
    if not isinstance(props, dict) or len(props) > 16 or \
            sum(len(k) + len(v or b"") for k, v in props.items()) > MAX_TXT:
        raise DecodeError(f"its TXT record is over {MAX_TXT} bytes or 16 keys")

    def text(key):
        value = props.get(key.encode())
        if value is None:
            return None
        try:
            value = value.decode("ascii")
        except (AttributeError, UnicodeDecodeError):
            raise DecodeError(f"its TXT {key} is not ASCII text") from None
        if not value.isprintable():
            raise DecodeError(f"its TXT {key} holds control characters")
        return value

    def number(key, default, high):
        value = text(key)
        if value is None:
            return default
        if not value.isdigit() or len(value) > 20 or not 0 <= int(value) <= high:
            raise DecodeError(f"its TXT {key} is not a number from 0 to {high}")
        return int(value)
    node = text("id")
    if node is None:
        raise DecodeError("it has no node id")
    check_node_id(node)   # a valid point, canonical text: whatever uses the id later can rely on it
    port = number("tp", 0, 65535)
    if not port:
        raise DecodeError("it has no transport port")
    version = number("v", 1, 255)
    caps = tuple(c for c in (text("caps") or "").split(",") if c)[:16]
    if any(len(c) > 32 for c in caps):
        raise DecodeError("its caps are not short names")
    good = [a for a in addresses if _reachable(a)][:MAX_ROUTES]
    if not good:
        raise DecodeError(f"it has no address a neighbour can have ({printable(addresses, 80)})")
    return PeerInfo(node, good, port, version, caps)


def _reachable(address: str) -> bool:
    """An address a neighbour on the LAN can have: not unspecified, loopback (this host itself), multicast,
    broadcast or reserved."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved or
                (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")))


class _DropLog:
    """A log line about dropped announcements at most every DROP_LOG_EVERY seconds, with how many since."""

    def __init__(self):
        self.last, self.count = 0.0, 0

    def __call__(self, name: str, why: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= DROP_LOG_EVERY:
            log.warning("ignoring an announcement %s: %s (%d dropped since the last such line)",
                        printable(name, 120), printable(why), self.count)
            self.last, self.count = now, 0


class Mdns:
    """Runs on the asyncio side of the bridge; `events` pushes ("seen", PeerInfo) and ("gone", instance name)."""

    def __init__(self, push, interfaces=None):
        self.push = push
        self.interfaces = interfaces
        self.azc = None
        self.browser = None
        self.info = None
        self.names: collections.OrderedDict[str, str] = collections.OrderedDict()   # instance name -> node id
        self.pending: collections.OrderedDict[str, None] = collections.OrderedDict()   # names to resolve
        self.resolving = 0
        self.dropped = _DropLog()
        self.tasks = TaskSet()   # the resolvers running

    async def start(self, node: str, port: int, caps, addresses: list[str]):
        kwargs = {"ip_version": IPVersion.V4Only}
        if self.interfaces:   # answer and browse only there (not on a router's WAN side)
            kwargs["interfaces"] = self.interfaces
        self.azc = AsyncZeroconf(**kwargs)
        self.info = AsyncServiceInfo(SERVICE, f"{node}.{SERVICE}", port=port,
                                     properties=txt_record(node, port, caps),
                                     addresses=[socket.inet_aton(a) for a in addresses],
                                     server=f"{node}.local.")
        await self.azc.async_register_service(self.info, allow_name_change=False)
        self.browser = AsyncServiceBrowser(self.azc.zeroconf, [SERVICE], handlers=[self._changed])

    def _changed(self, zeroconf, service_type, name, state_change):
        if state_change is ServiceStateChange.Removed:
            node = self.names.pop(name, None)
            if node is not None:
                self.push(("gone", (node, name)))
            return
        if name in self.pending:
            return
        if len(self.pending) >= MAX_PENDING:
            self.dropped(name, "too many announcements at once")
            return
        self.pending[name] = None
        if self.resolving < RESOLVING:
            self.resolving += 1
            self.tasks.spawn(self._resolve_pending())

    async def _resolve_pending(self):
        """Resolve queued names one after another (RESOLVING of these run at once)."""
        try:
            while self.pending:
                name, _ = self.pending.popitem(last=False)
                try:
                    await self._resolve(name)
                except Exception as exc:   # noqa: BLE001 - zeroconf's own failure on one name: drop that name
                    self.dropped(name, f"resolving it failed: {exc!r}")
        finally:
            self.resolving -= 1

    async def _resolve(self, name):
        if len(name) > 255:
            self.dropped(name, "its name is too long")
            return
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(self.azc.zeroconf, 3000):
            return
        try:
            peer = check_record(info.properties or {}, info.parsed_addresses(IPVersion.V4Only))
        except DecodeError as exc:
            self.dropped(name, str(exc))
            return
        self.names[name] = peer.node
        self.names.move_to_end(name)
        while len(self.names) > MAX_NAMES:
            self.names.popitem(last=False)
        self.push(("seen", (peer, name)))

    async def stop(self):
        """Say goodbye and stop browsing (once; a second call does nothing), the resolvers cancelled."""
        browser, azc, self.browser, self.azc = self.browser, self.azc, None, None
        if browser is not None:
            await browser.async_cancel()
        await self.tasks.cancel_all()
        if azc is not None:
            if self.info is not None:
                await azc.async_unregister_service(self.info)
            await azc.async_close()


def local_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (what neighbours can reach)."""
    import ifaddr
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out or ["127.0.0.1"]


class DiscoveryHandle(Handle):
    def __init__(self, bridge, mdns: Mdns, table):
        super().__init__("discovery")
        self.bridge = bridge
        self.mdns = mdns
        self.table = table

    def stats(self) -> dict:
        return {"peers": len(self.table.peers), "names": len(self.mdns.names), "resolving": len(self.mdns.tasks)}

    async def drain(self) -> None:
        """Say goodbye on the LAN now (neighbours stop sending here) and stop browsing."""
        await self.bridge.call(self.mdns.stop)


async def serve_discovery(bridge, table, node: str, port: int, caps, *, probe=None, lan=None,
                          task_status=trio.TASK_STATUS_IGNORED):
    """Announce this node and browse for others into table; probe(peer) after each sighting. (Liveness after
    that is the prober's: zeroconf answers re-queries from its cache for minutes after a node dies.) lan: the
    addresses the `listen` setting chose, the only ones answered on and announced (None: every interface)."""
    push, events = bridge.channel()
    mdns = Mdns(push, interfaces=list(lan) if lan else None)
    await bridge.call(mdns.start, node, port, caps, list(lan) if lan else local_addresses())
    probing: set[str] = set()

    async def probe_once(peer):
        probing.add(peer.node)
        try:
            await probe(peer)
        finally:
            probing.discard(peer.node)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(DiscoveryHandle(bridge, mdns, table))
            async for kind, item in events:
                if kind == "seen":
                    info, source = item
                    new = table.get(info.node) is None
                    peer = table.seen(info, source)
                    if peer is None:   # this node itself, or a table full of neighbours that answer
                        continue
                    if new:
                        log.info("neighbour %s at %s", peer.node, peer.endpoint())
                    # one probe per neighbour at a time and a few at once: a flood of announcements does not
                    # become a flood of sockets (the prober's rounds reach whoever is skipped here)
                    if probe is not None and peer.node not in probing and len(probing) < PROBING:
                        nursery.start_soon(probe_once, peer)
                elif kind == "gone":
                    gone, source = item
                    if table.get(gone) is not None:
                        log.info("neighbour %s said goodbye from %s", gone, printable(source, 120))
                        table.gone(gone, source)
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(3):
                try:
                    await bridge.call(mdns.stop)
                except BridgeClosed:   # past the deadline the bridge may stop first: no goodbye then
                    pass
