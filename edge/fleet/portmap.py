"""Port mappings on the home router (port_mapping = auto): the transport's port only, never the gateway's.

A node behind a home NAT asks its router to forward one external TCP port to its transport: NAT-PMP first (RFC
6886, edge/fleet/natpmp.py; one UDP exchange, and a router without it answers "port unreachable" at once), then
UPnP-IGD through miniupnpc (the MiniUPnP project's client, pinned; SSDP discovery takes a couple of seconds).
The mapping is asked for LEASE seconds and renewed at half its lifetime, removed when the agent stops (its drain,
within the shutdown deadline), and its external address goes into the fleet presence record, so neighbours in
other homes dial it (edge/fleet/plane.py). Every call that waits on the router runs in a worker thread; whatever
the router says is checked (an address a neighbour could be told, a port in range, a bounded lifetime) before use.
A router that refuses or is silent is asked again with backoff; the node serves on either way.
"""

import ipaddress
import logging
import time
from dataclasses import dataclass

import trio

from edge.errors import EdgeError
from edge.fleet import natpmp
from edge.logsafe import printable
from edge.service import Handle

log = logging.getLogger(__name__)
LEASE = 3600                 # seconds asked for; renewed at half of what was granted
MIN_RENEW = 30.0             # never renew more often than this, whatever lifetime a router grants
RETRY = (30.0, 600.0)        # seconds before asking again after every method failed: doubles up to the second
DISCOVER_MS = 2000           # how long UPnP's SSDP discovery listens for the router
DESCRIPTION = "hearth transport"
CALL_LIMIT = 20.0            # seconds one call to the router may take before it is given up (its thread abandoned)


class MappingError(EdgeError):
    """The router has no mapping to give, refused one, or said something that is not a valid answer."""


@dataclass(frozen=True)
class Mapping:
    method: str          # "NAT-PMP" or "UPnP-IGD"
    external: str        # the router's external address
    port: int            # the external port
    internal: int        # the transport's port
    lifetime: int        # seconds granted (0: until removed; renewed all the same)
    at: float            # when it was granted or last renewed (time.time())

    def renew_at(self) -> float:
        lifetime = self.lifetime or LEASE
        return self.at + max(MIN_RENEW, lifetime / 2)


class NatPmp:
    """RFC 6886 against the default route's gateway."""

    name = "NAT-PMP"

    def __init__(self, gateway: str | None = None):
        self.gateway = gateway

    def map(self, internal: int, external: int, lease: int) -> Mapping:
        gateway = self.gateway or natpmp.default_gateway()
        if gateway is None:
            raise MappingError("no default route: no gateway to ask for a NAT-PMP mapping")
        self.gateway = gateway
        try:
            address = natpmp.external_address(gateway)
            port, lifetime = natpmp.add_mapping(gateway, internal, external or internal, lease)
        except natpmp.NatPmpError as exc:
            raise MappingError(str(exc)) from None
        return Mapping(self.name, address, port, internal, lifetime, time.time())

    def unmap(self, mapping: Mapping) -> None:
        try:
            natpmp.delete_mapping(self.gateway, mapping.internal)
        except natpmp.NatPmpError as exc:
            raise MappingError(str(exc)) from None


class Upnp:
    """UPnP-IGD through miniupnpc: discovery, then AddPortMapping (AddAnyPortMapping when the port is taken)."""

    name = "UPnP-IGD"

    def __init__(self):
        self.upnp = None

    def _igd(self):
        import miniupnpc   # imported here: only nodes with port_mapping = auto load the C module
        if self.upnp is None:
            upnp = miniupnpc.UPnP()
            upnp.discoverdelay = DISCOVER_MS
            try:
                found = upnp.discover()
            except Exception:   # noqa: BLE001 - miniupnpc raises plain Exception (even "Success") for none
                found = 0
            if found <= 0:
                raise MappingError("no UPnP-IGD router answered on this LAN")
            try:
                upnp.selectigd()
            except Exception as exc:   # noqa: BLE001 - miniupnpc raises plain Exception with the reason
                raise MappingError(f"no usable UPnP-IGD router: {printable(str(exc))[:120]}") from None
            self.upnp = upnp
        return self.upnp

    def map(self, internal: int, external: int, lease: int) -> Mapping:
        upnp = self._igd()
        try:
            address = natpmp.check_external(str(upnp.externalipaddress())[:64])
            lan = str(ipaddress.ip_address(upnp.lanaddr))
            port = external or internal
            try:
                upnp.addportmapping(port, "TCP", lan, internal, DESCRIPTION, "", lease)
            except Exception:   # noqa: BLE001 - taken by another host (or only permanent leases): let it choose
                port = int(upnp.addanyportmapping(port, "TCP", lan, internal, DESCRIPTION, "", lease))
        except natpmp.NatPmpError as exc:
            self.upnp = None
            raise MappingError(str(exc)) from None
        except Exception as exc:   # noqa: BLE001 - miniupnpc's errors are plain Exceptions (a UPnP error text)
            self.upnp = None       # discovered again next time: the router may have restarted
            raise MappingError(f"the UPnP-IGD router refused a mapping: {printable(str(exc))[:120]}") from None
        if not 0 < port < 65536:
            raise MappingError(f"the UPnP-IGD router chose port {port}")
        return Mapping(self.name, address, port, internal, lease, time.time())

    def unmap(self, mapping: Mapping) -> None:
        try:
            self._igd().deleteportmapping(mapping.port, "TCP")
        except Exception as exc:   # noqa: BLE001
            raise MappingError(f"the UPnP-IGD router did not remove the mapping: {printable(str(exc))[:120]}") \
                from None


def reach(addresses, mapping: Mapping | None, configured: bool, webrtc: bool) -> str:
    """How neighbours in other homes reach this node: "direct" (a public or configured address), "mapped" (a port
    mapping on the router), "webrtc" (nothing here can be dialled from outside the LAN, but it serves over WebRTC:
    webrtc, i.e. ice_servers set) or "lan" (not at all)."""
    if mapping is not None:
        return "mapped"
    if configured or any(_global(host) for host, _ in addresses):
        return "direct"
    return "webrtc" if webrtc else "lan"


def _global(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False


class PortMapper:
    """The mapping service: finds a method that works, keeps its mapping renewed, removes it at the end."""

    def __init__(self, internal: int, methods=None, lease: int = LEASE):
        self.internal = internal
        self.methods = methods if methods is not None else (NatPmp(), Upnp())
        self.lease = lease
        self.mapping: Mapping | None = None
        self._method = None
        self.renewals = 0
        self.failures = 0
        self.last_error = ""
        self.next_try = 0.0

    @property
    def external(self) -> tuple[str, int] | None:
        """(address, port) where neighbours in other homes reach the transport, while mapped."""
        m = self.mapping
        return (m.external, m.port) if m is not None else None

    def stats(self) -> dict:
        m = self.mapping
        return {"method": m.method if m else None, "external": f"{m.external}:{m.port}" if m else None,
                "internal_port": self.internal, "lifetime": m.lifetime if m else None,
                "renew_in": round(max(0.0, m.renew_at() - time.time())) if m else None,
                "renewals": self.renewals, "failures": self.failures, "last_error": self.last_error}

    async def _call(self, fn, *args):
        with trio.fail_after(CALL_LIMIT):
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    async def _map(self) -> bool:
        """Ask each method in turn (the one that worked last first); True once one gave a mapping."""
        methods = sorted(self.methods, key=lambda m: m is not self._method)
        errors = []
        for method in methods:
            # renewing asks for the same external port again; a new mapping suggests the internal one
            port = self.mapping.port if self.mapping and method is self._method else 0
            try:
                mapping = await self._call(method.map, self.internal, port, self.lease)
            except (MappingError, trio.TooSlowError) as exc:
                errors.append(f"{method.name}: {exc or 'no answer'}")
                continue
            except Exception as exc:   # noqa: BLE001 - a bug or a library's surprise fails this try, not the agent
                log.warning("port mapping by %s failed: %s", method.name, printable(repr(exc))[:200])
                errors.append(f"{method.name}: {printable(repr(exc))[:120]}")
                continue
            if self.mapping is None or (mapping.external, mapping.port) != self.external:
                log.info("port mapping: %s:%d -> transport port %d by %s, for %s", mapping.external, mapping.port,
                         self.internal, mapping.method, f"{mapping.lifetime} s" if mapping.lifetime else "ever")
            else:
                self.renewals += 1
            self.mapping, self._method, self.last_error = mapping, method, ""
            return True
        self.mapping = None
        self.failures += 1
        self.last_error = "; ".join(errors)[:400]
        return False

    async def run(self) -> None:
        delay = RETRY[0]
        while True:
            if await self._map():
                delay = RETRY[0]
                await trio.sleep(max(0.0, self.mapping.renew_at() - time.time()))
                continue
            log.info("port mapping: none (%s); asking again within %.0f s", self.last_error, delay)
            self.next_try = time.time() + delay
            await trio.sleep(delay)
            delay = min(RETRY[1], delay * 2)

    async def remove(self) -> None:
        """Remove the mapping, if any (bounded by CALL_LIMIT; the router forgets it at its lifetime anyway)."""
        mapping, self.mapping = self.mapping, None
        if mapping is None:
            return
        try:
            await self._call(self._method.unmap, mapping)
            log.info("port mapping: %s:%d removed", mapping.external, mapping.port)
        except (MappingError, trio.TooSlowError, OSError) as exc:
            log.info("port mapping: %s:%d not removed (%s); it lapses in %d s", mapping.external, mapping.port,
                     exc or "no answer", mapping.lifetime)


class PortMapHandle(Handle):
    """The service's handle: its stats, .external for the presence record, and a drain that removes the
    mapping while the agent stops (within its shutdown deadline)."""

    def __init__(self, mapper: PortMapper):
        super().__init__("portmap", mapper.stats)
        self.mapper = mapper

    @property
    def external(self) -> tuple[str, int] | None:
        return self.mapper.external

    @property
    def mapping(self) -> Mapping | None:
        return self.mapper.mapping

    async def drain(self) -> None:
        await self.mapper.remove()


async def serve_portmap(agent, *, task_status=trio.TASK_STATUS_IGNORED):
    """The agent's port mapping (port_mapping = auto): reports its handle at once, then maps in the background
    and keeps the mapping until cancelled; the mapping is removed on the way out (by the drain, else here)."""
    internal = int(agent.services.get("transport").endpoint.rsplit(":", 1)[1])
    mapper = PortMapper(internal)
    task_status.started(PortMapHandle(mapper))
    try:
        await mapper.run()
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 2):
            await mapper.remove()
