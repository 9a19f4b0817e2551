"""The peer table: what this node knows of each neighbour, when it was first and last seen, how it answers."""

import time
from dataclasses import dataclass, field


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
        if self.rejected:
            return 0.0
        if not self.probes:
            return 0.05
        latency = 1.0 / (1.0 + 100 * self.rtt) if self.rtt is not None else 0.1
        speed = self.throughput / (self.throughput + 10e6) if self.throughput else 0.1
        return round(self.uptime_ratio * 0.6 + latency * 0.2 + speed * 0.2, 4)

    def endpoint(self) -> str:
        host = self.addresses[0]
        return f"tcp://[{host}]:{self.port}" if ":" in host else f"tcp://{host}:{self.port}"

    def as_dict(self) -> dict:
        return {"node": self.node, "addresses": self.addresses, "port": self.port, "version": self.version,
                "caps": list(self.caps), "free": self.free, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 2),
                "throughput": None if self.throughput is None else int(self.throughput),
                "uptime": round(self.uptime_ratio, 3), "score": self.score, "rejected": self.rejected}


class PeerTable:
    def __init__(self, self_id: str, expiry: float):
        self.self_id = self_id
        self.expiry = expiry
        self.peers: dict[str, PeerInfo] = {}

    def seen(self, info: PeerInfo) -> PeerInfo:
        """Record an announcement; keeps first_seen and probe history of a known peer."""
        if info.node == self.self_id:
            return info
        known = self.peers.get(info.node)
        if known is None:
            self.peers[info.node] = info
            return info
        known.addresses, known.port, known.version = info.addresses, info.port, info.version
        known.caps, known.free, known.last_seen = info.caps, info.free, time.time()
        return known

    def gone(self, node: str) -> None:
        self.peers.pop(node, None)

    def expire(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        old = [n for n, p in self.peers.items() if now - p.last_seen > self.expiry]
        for n in old:
            del self.peers[n]
        return old

    def best(self, count: int | None = None) -> list[PeerInfo]:
        ranked = sorted((p for p in self.peers.values() if not p.rejected), key=lambda p: -p.score)
        return ranked if count is None else ranked[:count]
