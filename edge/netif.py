"""Where the node listens and what it tells the LAN: the `listen` setting made into addresses.

    listen = "auto"          every interface but the one holding the default route on a box that forwards
                             packets (a router: its WAN side, where strangers are); elsewhere every interface
    listen = "all"           every interface (also "0.0.0.0")
    listen = "br-lan,10.0.0.5"   these interfaces (their IPv4 addresses) and addresses

The transport and the gateway bind each chosen address (loopback too, for this host's own commands and
browser); mDNS answers only on the chosen interfaces and, like WebRTC's candidates, lists only their addresses.
Addresses are read when the agent starts: an address added later is served after a restart.
"""

import dataclasses
import ipaddress
import logging

from edge.config import ConfigError

log = logging.getLogger(__name__)
ALL = "0.0.0.0"
LOOPBACK = "127.0.0.1"
FORWARDING = "/proc/sys/net/ipv4/ip_forward"
ROUTES = "/proc/net/route"


@dataclasses.dataclass(frozen=True)
class Listen:
    """binds: the addresses to bind ((ALL,) for every interface); lan: the addresses neighbours and browsers
    may be told (never loopback); every: whether binds is every interface (mDNS then answers on all)."""
    binds: tuple[str, ...]
    lan: tuple[str, ...]
    every: bool

    @property
    def url_host(self) -> str:
        """The host for the player's URL: an address people on the LAN can reach, else loopback."""
        return self.lan[0] if self.lan else (LOOPBACK if self.every else self.binds[0])


def forwarding(path: str = FORWARDING) -> bool:
    """Whether this box forwards IPv4 packets (a router)."""
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def default_route_interfaces(path: str = ROUTES) -> set[str]:
    """The interfaces holding an IPv4 default route (destination and mask 0)."""
    out = set()
    try:
        with open(path) as f:
            next(f, None)   # the header line
            for line in f:
                cols = line.split()
                if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
                    out.add(cols[0])
    except OSError:
        pass
    return out


def interface_addresses() -> dict[str, list[str]]:
    """{interface name: its IPv4 addresses}."""
    import ifaddr
    out: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        out.setdefault(adapter.name, []).extend(
            ip.ip for ip in adapter.ips if isinstance(ip.ip, str))
    return out


def resolve(setting: str, *, interfaces: dict[str, list[str]] | None = None, routed: bool | None = None,
            wan: set[str] | None = None) -> Listen:
    """The addresses the `listen` setting names on this host (interfaces, routed, wan: read from the host
    unless given). ConfigError naming the value when an entry is neither an interface nor an address here."""
    interfaces = interface_addresses() if interfaces is None else interfaces
    every_lan = _lan([a for addrs in interfaces.values() for a in addrs])
    value = setting.strip().lower()
    if value in ("all", ALL, "", "::"):
        return Listen((ALL,), tuple(every_lan), True)
    if value == "auto":
        routed = forwarding() if routed is None else routed
        if not routed:
            return Listen((ALL,), tuple(every_lan), True)
        wan = default_route_interfaces() if wan is None else wan
        lan = _lan([a for name, addrs in interfaces.items() if name not in wan for a in addrs])
        if wan:
            log.info("this box forwards packets (a router?): not listening on %s, which holds the default route "
                     "(listen = \"all\" in hearth.toml listens there too)", ", ".join(sorted(wan)))
        if not lan:
            log.warning("no interface but the default route's has an address: listening on loopback only")
        return Listen((LOOPBACK, *lan), tuple(lan), False)
    chosen: list[str] = []
    for entry in (e.strip() for e in setting.split(",")):
        if not entry:
            continue
        if entry in interfaces:
            chosen.extend(interfaces[entry])
            continue
        try:
            ip = ipaddress.IPv4Address(entry)
        except ValueError:
            raise ConfigError(f"listen = {setting!r}: {entry!r} is neither an interface of this host "
                              f"({', '.join(sorted(interfaces))}) nor an IPv4 address; use auto, all, or a comma "
                              "list of interfaces and addresses") from None
        if ip.is_unspecified:
            return Listen((ALL,), tuple(every_lan), True)
        chosen.append(str(ip))
    if not chosen:
        raise ConfigError(f"listen = {setting!r} names no address; use auto, all, or a comma list of "
                          "interfaces and addresses")
    binds = tuple(dict.fromkeys(chosen))
    return Listen(binds, tuple(_lan(binds)), False)


def _lan(addresses) -> list[str]:
    """The addresses neighbours can be told of: not loopback, each once, in order."""
    return list(dict.fromkeys(a for a in addresses if not ipaddress.IPv4Address(a).is_loopback))
