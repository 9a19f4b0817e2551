"""mDNS: announce `_hearth._tcp.local.` and browse for it, with zeroconf's asyncio API behind the bridge.

TXT records: id (node id), v (protocol version), tp (transport port), caps (comma list), free (bytes).
"""

import asyncio
import logging
import socket

import trio
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edge.discovery.peers import PeerInfo

log = logging.getLogger(__name__)
SERVICE = "_hearth._tcp.local."


def txt_record(node: str, port: int, caps, free: int, version: int = 1) -> dict:
    return {"id": node, "v": str(version), "tp": str(port), "caps": ",".join(caps), "free": str(free)}


def parse_txt(props: dict, addresses: list[str]) -> PeerInfo | None:
    """A PeerInfo from an announcement's TXT and addresses; None if it is not a well-formed Hearth record."""
    def text(key):
        value = props.get(key.encode())
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else None
    try:
        node, port = text("id"), int(text("tp") or 0)
        version, free = int(text("v") or 1), int(text("free") or 0)
    except (TypeError, ValueError):
        return None
    if not node or not node.startswith("hn") or len(node) != 54 or not 0 < port < 65536 or not addresses:
        return None
    caps = tuple(c for c in (text("caps") or "").split(",") if c)
    return PeerInfo(node, addresses, port, version, caps, free)


class Mdns:
    """Runs on the asyncio side of the bridge; `events` pushes ("seen", PeerInfo) and ("gone", instance name)."""

    def __init__(self, push, interfaces=None):
        self.push = push
        self.interfaces = interfaces
        self.azc = None
        self.browser = None
        self.info = None
        self.names: dict[str, str] = {}   # instance name -> node id

    async def start(self, node: str, port: int, caps, free: int, addresses: list[str]):
        kwargs = {"ip_version": IPVersion.V4Only}
        if self.interfaces:
            kwargs["interfaces"] = self.interfaces
        self.azc = AsyncZeroconf(**kwargs)
        self.info = AsyncServiceInfo(SERVICE, f"{node}.{SERVICE}", port=port,
                                     properties=txt_record(node, port, caps, free),
                                     addresses=[socket.inet_aton(a) for a in addresses],
                                     server=f"{node}.local.")
        await self.azc.async_register_service(self.info, allow_name_change=False)
        self.browser = AsyncServiceBrowser(self.azc.zeroconf, [SERVICE], handlers=[self._changed])

    def _changed(self, zeroconf, service_type, name, state_change):
        if state_change is ServiceStateChange.Removed:
            self.push(("gone", self.names.pop(name, None)))
            return
        asyncio.ensure_future(self._resolve(name))

    async def _resolve(self, name):
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(self.azc.zeroconf, 3000):
            return
        peer = parse_txt(info.properties or {}, info.parsed_addresses(IPVersion.V4Only))
        if peer is None:
            log.debug("ignoring a malformed announcement %s", name)
            return
        self.names[name] = peer.node
        self.push(("seen", peer))

    async def stop(self):
        if self.browser is not None:
            await self.browser.async_cancel()
        if self.azc is not None:
            if self.info is not None:
                await self.azc.async_unregister_service(self.info)
            await self.azc.async_close()


def local_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (what neighbours can reach)."""
    import ifaddr
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out or ["127.0.0.1"]


async def serve_discovery(bridge, table, node: str, port: int, caps, free, *, probe=None,
                          task_status=trio.TASK_STATUS_IGNORED):
    """Announce this node and browse for others into table; probe(peer) after each sighting. (Liveness after
    that is the prober's: zeroconf answers re-queries from its cache for minutes after a node dies.)"""
    push, events = bridge.channel()
    mdns = Mdns(push)
    await bridge.call(mdns.start, node, port, caps, free(), local_addresses())
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(mdns)
            async for kind, item in events:
                if kind == "seen" and item.node != node:
                    new = item.node not in table.peers
                    peer = table.seen(item)
                    if new:
                        log.info("neighbour %s at %s", peer.node, peer.endpoint())
                    if probe is not None:
                        nursery.start_soon(probe, peer)
                elif kind == "gone" and item:
                    log.info("neighbour %s left", item)
                    table.gone(item)
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(3):
                await bridge.call(mdns.stop)
