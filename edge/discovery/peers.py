"""The peer table: what this node knows of each neighbour, when it was first and last seen, how it answers.

Anyone on the LAN can announce any node id from any address, so the table trusts an announcement for nothing
but "try there": each address a node is announced at is a route of its own, remembered with the announcement
it came from. A route where the node's CURVE handshake succeeded is verified; one where another key answers
is an impostor's, and that mark stays on the route, not the node. An unverified route never displaces a
verified one, and the table itself is bounded (MAX_PEERS neighbours, MAX_ROUTES routes each): a flood of
announcements evicts the unverified and the silent first, never a neighbour that answers.
Two node ids naming one CURVE key (an Ed25519 key and its negation) are one neighbour: entries are told apart
by that key, not by their text.
"""

import functools
import time
from dataclasses import dataclass, field

from edge.errors import DecodeError
from edge.identity import check_node_id

MAX_PEERS = 256     # neighbours kept; a home LAN has a handful, a flood of announcements gets no more
MAX_ROUTES = 4      # addresses kept per neighbour
MAX_WAN = 64        # neighbours across homes (from the fleet broker) kept: a small box probes each of them
FLEET = "fleet"     # the source of routes the fleet plane gave (edge/fleet/plane.py)
MAX_DORMANT = 64    # expired neighbours still tried now and then (see PeerTable.dormant)
DORMANT_FOR = 600.0  # seconds an expired neighbour is still tried
IMPOSTOR = "its transport key does not match the node id it announced"
WAN_PROBE_BACKOFF = 300.0   # seconds between probes of a WAN neighbour that has never answered, at most
WAN_TURNOVER = 10.0         # seconds between displacing a WAN neighbour that never answered for a newcomer


@dataclass
class Route:
    """One address a neighbour was announced at (or configured with)."""

    address: str
    port: int
    source: str = ""            # the announcement it came from (an mDNS instance name; "" when configured)
    seen: float = field(default_factory=time.time)   # last announced there, or answered there
    verified: bool = False      # the node's own key finished a handshake here
    impostor: bool = False      # another key answers here

    def endpoint(self) -> str:
        host = self.address
        return f"tcp://[{host}]:{self.port}" if ":" in host else f"tcp://{host}:{self.port}"


@dataclass
class PeerInfo:
    node: str
    addresses: list[str]
    port: int
    version: int = 1
    caps: tuple[str, ...] = ()
    free: int = 0
    first_seen: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    rtt: float | None = None          # seconds, from the last hello probe
    probes: int = 0
    failures: int = 0
    rejected: str | None = None       # why this peer is not used (its transport key did not match, ...)
    throughput: float | None = None   # bytes a second it gives us: probes and real fetches, smoothed
    throughput_at: float = 0.0        # when it was last measured (time.time())
    routes: dict = field(default_factory=dict)   # endpoint -> Route; made from addresses and port if empty
    wan: bool = False                 # met through the fleet broker, not on the LAN: ranked after LAN ones
    next_probe: float = 0.0           # (monotonic) when a WAN neighbour that never answered is tried again

    def __post_init__(self):
        if not self.routes:
            for address in self.addresses[:MAX_ROUTES]:
                route = Route(address, self.port, seen=self.last_seen)
                self.routes[route.endpoint()] = route

    def probe_due(self, now: float, interval: float) -> bool:
        """Whether the prober tries this neighbour in its round at now (monotonic). A WAN neighbour that has
        never answered (behind a NAT without a mapping, or gone) is tried half as often after each failure, at
        least every WAN_PROBE_BACKOFF seconds: each try costs a socket, a timeout and a handshake check, and the
        table holds up to MAX_WAN of them (with 1,000 such nodes in its region, probing them every round was
        most of an agent's idle CPU: benchmarks/fleet_scale.py). LAN and answering neighbours: every round."""
        if not self.wan or self.verified:
            return True
        if now < self.next_probe:
            return False
        self.next_probe = now + min(WAN_PROBE_BACKOFF, interval * 2 ** min(self.failures, 8))
        return True

    def route(self) -> Route | None:
        """The route to use: the verified one heard from last, else the newest not known to be an impostor's."""
        usable = [r for r in self.routes.values() if not r.impostor]
        if not usable:
            return None
        return max(usable, key=lambda r: (r.verified, r.seen))

    @property
    def verified(self) -> bool:
        return any(r.verified for r in self.routes.values())

    def answered(self, endpoint: str, now: float | None = None) -> None:
        """The node's own key finished a handshake at endpoint."""
        now = time.time() if now is None else now
        route = self.routes.get(endpoint)
        if route is not None:
            route.verified, route.impostor, route.seen = True, False, now
        self.last_seen = now
        if self.rejected == IMPOSTOR:
            self.rejected = None

    def impostor_at(self, endpoint: str) -> None:
        """Another key answers at endpoint: that route is not used again; the node is rejected only when no
        other route is left to try."""
        route = self.routes.get(endpoint)
        if route is not None:
            route.verified, route.impostor = False, True
        if self.route() is None:
            self.rejected = IMPOSTOR

    def measured(self, bytes_per_second: float, now: float | None = None) -> None:
        """A throughput sample (a probe, or a fetch's share): half the old value, half the new."""
        self.throughput = bytes_per_second if self.throughput is None else \
            0.5 * self.throughput + 0.5 * bytes_per_second
        self.throughput_at = time.time() if now is None else now

    @property
    def uptime_ratio(self) -> float:
        return (self.probes - self.failures) / self.probes if self.probes else 0.0

    @property
    def score(self) -> float:
        """Higher is better: answers reliably, quickly and fast. A rejected peer scores 0.

        Uptime counts 0.6; the RTT 0.2 (1 at 0 ms, 0.5 at 10 ms); the throughput 0.2 (0.5 at 10 MB/s, 0.9 at
        90 MB/s; 0.1 until measured)."""
        if self.rejected or self.route() is None:
            return 0.0
        if not self.probes:
            return 0.05
        latency = 1.0 / (1.0 + 100 * self.rtt) if self.rtt is not None else 0.1
        speed = self.throughput / (self.throughput + 10e6) if self.throughput else 0.1
        return round(self.uptime_ratio * 0.6 + latency * 0.2 + speed * 0.2, 4)

    def endpoint(self) -> str:
        route = self.route() or next(iter(self.routes.values()), None)
        if route is None:
            return Route(self.addresses[0], self.port).endpoint()
        return route.endpoint()

    @property
    def source(self) -> str:
        """How this neighbour was met: fleet (the broker), mdns, or static (configured)."""
        if self.wan:
            return FLEET
        return "mdns" if any(r.source and r.source != FLEET for r in self.routes.values()) else "static"

    def as_dict(self) -> dict:
        ranked = sorted(self.routes.values(), key=lambda r: (not r.impostor, r.verified, r.seen), reverse=True)
        return {"node": self.node, "source": self.source, "addresses": [r.address for r in ranked] or self.addresses,
                "port": ranked[0].port if ranked else self.port, "version": self.version,
                "verified": [r.address for r in ranked if r.verified],
                "impostors": [r.address for r in ranked if r.impostor],
                "caps": list(self.caps), "free": self.free, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 2),
                "throughput": None if self.throughput is None else int(self.throughput),
                "uptime": round(self.uptime_ratio, 3), "score": self.score, "rejected": self.rejected}


@functools.lru_cache(maxsize=4 * MAX_PEERS + 4 * MAX_WAN)
def _key(node: str):
    """What tells neighbours apart: the CURVE key of a node id (ids from outside were checked at the boundary;
    a text that is not a node id, as in some tests, stands for itself). Remembered for the last few hundred
    ids: the conversion costs ~0.2 ms on a small box, and the fleet plane re-announces its WAN neighbours
    (hundreds of records) to the table each tick, several lookups each (benchmarks/fleet_scale.py measured it
    as most of the agent's idle CPU with 1,000 WAN nodes in its region)."""
    try:
        return check_node_id(node)
    except DecodeError:
        return node


class PeerTable:
    def __init__(self, self_id: str, expiry: float, max_peers: int = MAX_PEERS, clock=time.time,
                 max_wan: int = MAX_WAN):
        """clock: what "now" is for sightings and expiry. Wall-clock time by default, as the entries' own
        first_seen and last_seen are (`hearth peers` shows them as dates); a test passes a clock it moves."""
        self.clock = clock
        self.self_id = self_id
        self.self_key = _key(self_id)
        self.expiry = expiry
        self.max_peers = max_peers
        self.max_wan = max_wan
        self.peers: dict[str, PeerInfo] = {}
        self._by_key: dict = {}   # CURVE key -> the node id text the entry is listed under
        # Neighbours that answered on their own key once and then went silent past expiry: node -> (its entry,
        # when it expired). The prober still tries them for DORMANT_FOR. A neighbour that reboots announces the
        # same records again, and zeroconf raises no event for records already in its cache, so without this a
        # node back from a reboot longer than the expiry stays unlisted until its cached records run out.
        self.dormant: dict[str, tuple[PeerInfo, float]] = {}
        self._turnover = float("-inf")   # when a newcomer last displaced a WAN neighbour (see fleet_seen)

    def get(self, node: str) -> PeerInfo | None:
        """The entry of node, whichever of its key's texts names it."""
        listed = self._by_key.get(_key(node))
        return None if listed is None else self.peers.get(listed)

    def seen(self, info: PeerInfo, source: str = "") -> PeerInfo | None:
        """Record an announcement: a new neighbour, or a route (new or refreshed) of a known one, keeping its
        first_seen and probe history. None when it is not recorded: this node itself, or a table full of
        neighbours that answer."""
        key = _key(info.node)
        if key == self.self_key:
            return None
        now = self.clock()
        known = self.get(info.node)
        self.dormant.pop(info.node, None)
        if known is None:
            if len(self.peers) >= self.max_peers and not self._evict_one():
                return None
            for route in info.routes.values():
                route.source, route.seen = source or route.source, now
            self.peers[info.node] = info
            self._by_key[key] = info.node
            return info
        # an announcement keeps a neighbour alive only where it could be the neighbour's own: at an address it
        # answered on, or while it has answered nowhere (a node that has gone quiet is not kept listed by
        # someone else announcing its id)
        alive = not known.verified
        for new in info.routes.values():
            endpoint = new.endpoint()
            route = known.routes.get(endpoint)
            if route is not None:
                route.seen, route.source = now, source or route.source
                alive = alive or route.verified
                continue
            if len(known.routes) >= MAX_ROUTES and not _drop_route(known):
                continue   # every route it has answered on: an unverified address does not displace one
            new.source, new.seen = source or new.source, now
            known.routes[endpoint] = new
        known.addresses = [r.address for r in known.routes.values()]
        known.version, known.caps = info.version, info.caps   # free comes from its Welcome, not from mDNS
        if alive:
            known.last_seen = now
        return known

    def fleet_seen(self, node: str, addrs, version: int = 1, caps=(), free: int = 0) -> PeerInfo | None:
        """A presence record the fleet plane verified (signed by node, certified in a fleet): node becomes a
        WAN neighbour at addrs ((ip, port) pairs), or a known neighbour gains those routes. None when not
        recorded: this node, or max_wan WAN neighbours that all answer already."""
        routes = {}
        for host, port in list(addrs)[:MAX_ROUTES]:
            route = Route(host, port, source=FLEET)
            routes[route.endpoint()] = route
        if not routes:
            return None
        known = self.get(node)
        if known is None and not self.wan_room():
            # full: a newcomer displaces a WAN neighbour that was tried and never answered, one each
            # WAN_TURNOVER seconds. A region of 1,000 nodes behind NATs republishes ~3 records a second; each
            # displacing one would make a probe (a socket, a timeout, a handshake check) of each newcomer, most of
            # an agent's idle CPU (benchmarks/fleet_scale.py); this way the table still works through the region
            now = self.clock()
            if now - self._turnover < WAN_TURNOVER or not self._evict_one(wan_only=True, tried=True):
                return None
            self._turnover = now
        if known is not None and any(e not in known.routes for e in routes):
            known.next_probe = 0.0    # a new address (a mapping made, a move): worth trying at once
        first = next(iter(routes.values()))
        info = self.seen(PeerInfo(node, [r.address for r in routes.values()], first.port, version, tuple(caps),
                                  free, routes=routes, wan=True), source=FLEET)
        if info is not None and info.wan:
            info.free = free   # signed by the node itself, unlike an mDNS announcement
        return info

    def wan_room(self) -> bool:
        """Whether a WAN neighbour can be added without displacing one."""
        return sum(p.wan for p in self.peers.values()) < self.max_wan

    def fleet_gone(self, node: str) -> None:
        """The fleet's record of node was cleared (a will, or anyone's empty message: unsigned): drop the
        routes the fleet gave that no handshake has verified."""
        self.gone(node, source=FLEET)

    def _evict_one(self, wan_only: bool = False, tried: bool = False) -> bool:
        """Make room for a new neighbour: forget the one heard from least recently among those never verified
        (impostors' first; with tried, only among those probed at least once). False when every neighbour has
        answered on its own key: the newcomer waits."""
        candidates = [p for p in self.peers.values() if not p.verified and (p.wan or not wan_only)
                      and (p.probes or not tried)]
        if not candidates:
            return False
        worst = min(candidates, key=lambda p: (p.route() is not None, p.last_seen))
        self._remove(worst.node)
        return True

    def _remove(self, node: str) -> None:
        info = self.peers.pop(node, None)
        if info is not None and self._by_key.get(_key(node)) == node:
            del self._by_key[_key(node)]

    def gone(self, node: str, source: str | None = None) -> None:
        """A goodbye. mDNS has no signatures, so a goodbye from source drops only the routes that source
        announced and no one has verified (liveness of a verified route is the prober's); without a source,
        the neighbour is forgotten."""
        info = self.get(node)
        if info is None:
            return
        if source is not None:
            for endpoint, route in list(info.routes.items()):
                if route.source == source and not route.verified:
                    del info.routes[endpoint]
            if info.routes:
                return
        self._remove(info.node)

    def expire(self, now: float | None = None) -> list[str]:
        """Forget neighbours silent for expiry, and routes neither announced nor answering for that long. A
        forgotten neighbour that had answered on its own key is kept dormant (see revive) for DORMANT_FOR."""
        now = self.clock() if now is None else now
        old = [n for n, p in self.peers.items() if now - p.last_seen > self.expiry]
        for n in old:
            info = self.peers[n]
            self._remove(n)
            if info.verified and not info.rejected:
                self.dormant.pop(n, None)
                self.dormant[n] = (info, now)
        for n in [n for n, (_, since) in self.dormant.items() if now - since > DORMANT_FOR]:
            del self.dormant[n]
        while len(self.dormant) > MAX_DORMANT:
            del self.dormant[next(iter(self.dormant))]     # the longest silent first
        for p in self.peers.values():
            stale = [e for e, r in p.routes.items() if now - r.seen > self.expiry]
            if len(stale) < len(p.routes):   # the last route goes with the neighbour, not before it
                for e in stale:
                    del p.routes[e]
        return old

    def revive(self, node: str) -> PeerInfo | None:
        """A dormant neighbour answered a probe on its own key after it expired: list it again (its history
        kept). None when it has not answered since, is not dormant, or the table has no room."""
        entry = self.dormant.get(node)
        if entry is None:
            return None
        info, since = entry
        if info.last_seen <= since or self.get(node) is not None:
            return None
        if len(self.peers) >= self.max_peers and not self._evict_one():
            return None
        del self.dormant[node]
        self.peers[node] = info
        self._by_key[_key(node)] = node
        return info

    def best(self, count: int | None = None) -> list[PeerInfo]:
        """The usable neighbours, LAN ones first (a neighbour in the home is nearer than any across homes),
        each group by score."""
        ranked = sorted((p for p in self.peers.values() if not p.rejected and p.route() is not None),
                        key=lambda p: (p.wan, -p.score))
        return ranked if count is None else ranked[:count]


def _drop_route(peer: PeerInfo) -> bool:
    """Make room for a route of peer: drop an impostor's route, else the oldest unverified; False if every
    route is verified."""
    candidates = [(not r.impostor, r.seen, e) for e, r in peer.routes.items() if not r.verified]
    if not candidates:
        return False
    del peer.routes[min(candidates)[2]]
    return True

