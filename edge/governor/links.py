"""Which link a peer is on: "lan" or "wan".

LAN is loopback, link-local, the subnets of this node's own interfaces and a configured list of CIDRs
(`lan_subnets`); everything else is WAN. On a box that forwards packets (a router) the interface holding the
default route is its WAN side, so its subnet (the ISP's) is not LAN. The interfaces are read when the classifier
is made and again on refresh() (the governor's service refreshes it each minute, in a worker thread: reading
the interfaces is a system call, and may be slow on a busy box); classify() itself only compares addresses.
"""

import ipaddress
import threading

from edge import netif

LAN = "lan"
WAN = "wan"
CLASSES = (LAN, WAN)


def interface_networks() -> dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """{interface name: the networks of its addresses (IPv4 and IPv6)}."""
    import ifaddr
    out: dict[str, list] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                out.setdefault(adapter.name, []).append(
                    ipaddress.ip_network(f"{address.split('%')[0]}/{ip.network_prefix}", strict=False))
            except ValueError:   # an address ifaddr reports oddly: it is not one a peer can come from
                continue
    return out


def parse_networks(cidrs, source: str = "lan_subnets") -> list:
    """The networks a list of CIDRs names; ValueError naming the bad entry."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{source}: {cidr!r} is not a network; write CIDRs such as 192.168.1.0/24 or "
                             "fd00::/8") from None
    return out


class LinkClassifier:
    """classify(ip) -> "lan" or "wan". Safe to call from any thread (the transport's serving thread, Trio)."""

    def __init__(self, extra_lan=(), *, interfaces: dict | None = None, routed: bool | None = None,
                 wan_interfaces: set[str] | None = None):
        """extra_lan: CIDRs that are LAN besides the interfaces' own subnets. interfaces ({name: [networks]}),
        routed (this box forwards packets) and wan_interfaces (those holding the default route) are read from
        the host unless given (tests give them)."""
        self.extra = parse_networks(extra_lan)
        self._given = (interfaces, routed, wan_interfaces)
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self.networks: tuple = ()
        self.generation = 0   # bumped by each refresh that changed the networks: callers keeping a class re-ask
        self.refresh()

    def refresh(self) -> bool:
        """Read the interfaces again; True when the LAN networks changed. Blocking (a system call): call it
        from a worker thread in an agent."""
        interfaces, routed, wan = self._given
        interfaces = interface_networks() if interfaces is None else interfaces
        routed = netif.forwarding() if routed is None else routed
        wan = (netif.default_route_interfaces() if wan is None else wan) if routed else set()
        networks = tuple(dict.fromkeys(
            [n for name, nets in interfaces.items() if name not in wan for n in nets] + self.extra))
        with self._lock:
            if networks == self.networks:
                return False
            self.networks = networks
            self._cache = {}
            self.generation += 1
            return True

    def classify(self, ip: str) -> str:
        """"lan" or "wan" for a peer's address alone (IPv4, IPv6 with or without a zone, IPv4-mapped IPv6; no
        port). Anything that is not an address is WAN: the cautious side."""
        known = self._cache.get(ip)
        if known is not None:
            return known
        kind = self._classify(ip)
        with self._lock:
            if len(self._cache) >= 4096:   # peers' addresses are bounded by the peer tables, but be sure
                self._cache.clear()
            self._cache[ip] = kind
        return kind

    def _classify(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return WAN
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback or address.is_link_local:
            return LAN
        for network in self.networks:
            if address.version == network.version and address in network:
                return LAN
        return WAN
