"""What the transport server keeps per peer, and what it counts: who may do what (Policy), each peer's tokens and
held-back bytes (Peer), the bounded table of peers, the rate-limited refusal log, and the held-back queue of
blocks waiting for the upload limit. Everything here runs in the serving thread; times come from its clock.

Keys cost nothing to make, so the table of peers keeps the MAX_PEERS used last and forgets a peer idle for
PEER_IDLE (it says hello again). A block the upload limit cannot pay for yet is held back, up to PACED_PEER for
one peer and PACED_BYTES in all (a peer with nothing held may still have one block held up to twice
PACED_BYTES), so a flood cannot crowd the others out and memory stays bounded.
"""

import collections
import heapq
import logging
from dataclasses import dataclass, field

import zmq.utils.z85

from edge.logsafe import printable
from edge.ratelimit import UNLIMITED, ByteRate
from edge.service import Counters

log = logging.getLogger(__name__)
PACED_BYTES = 16 << 20 # block bytes waiting for the upload limit, over all peers; more Gets get BUSY ...
PACED_PEER = 4 << 20   # ... and for one peer (a fetch's window of 16 blocks), so one cannot crowd out the rest
MAX_PEERS = 4096       # peers (CURVE keys) whose state is kept; the one used least recently goes first ...
PEER_IDLE = 300.0      # ... and one silent this long (seconds) is forgotten
MAX_LOGGED = 1024      # peers whose last refusal log line is remembered (for its rate limit)
REFUSAL_LOG_EVERY = 10.0   # seconds between refusal lines about one peer

# what the server counts: the short name `hearth status` shows (its "served") -> (metric, help)
COUNTERS = {
    "requests": ("requests_total", "requests from neighbours"),
    "blocks_served": ("blocks_served_total", "blocks sent to neighbours"),
    "bytes_served": ("bytes_served_total", "block bytes sent to neighbours"),
    "refusals": ("refusals_total", "requests refused by admission or policy"),
    "busy": ("busy_total", "requests told to retry later (a peer over its rate, the upload limit's held-back share "
                           "full, a probe the limit cannot pay, shutting down)"),
    "bad_requests": ("bad_requests_total", "malformed requests"),
    "errors": ("errors_total", "requests this node failed to answer (its own errors: a failing disk, a bug)"),
    "dropped": ("dropped_total", "replies dropped for a peer that does not read them"),
    "probes": ("probes_total", "throughput probes from neighbours answered"),
    "probe_bytes": ("probe_bytes_total", "filler bytes sent to neighbours' throughput probes"),
    "not_found": ("not_found_total", "blocks asked for that this node does not hold"),
    "hellos": ("hellos_total", "neighbours' hellos accepted"),
    "blocks_stored": ("blocks_stored_total", "blocks neighbours put here"),
    "peers_forgotten": ("peers_forgotten_total", "peers' state forgotten (idle, or the table full)"),
    "pieces_stored": ("pieces_stored_total", "pieces of neighbours' protected pins received, verified and kept"),
    "pieces_served": ("pieces_served_total", "chunks of pieces sent to neighbours"),
    "pieces_full": ("pieces_full_total", "pieces refused because the share was full"),
    "audits_answered": ("audits_answered_total", "storage audits answered with a proof"),
    "audits_failed": ("audits_failed_total", "storage audits of a piece found damaged here"),
    "sibling_refused": ("sibling_refused_total", "reads of a piece refused to a holder of the same segment without "
                                                 "a repair order (docs/protection.md)"),
    "sibling_whole_reads": ("sibling_whole_reads_total", "whole reads of a piece begun by a holder of the same "
                                                         "segment (one a day each)"),
    "sibling_ordered": ("sibling_ordered_total", "chunks of pieces read by a holder of the same segment with a "
                                                 "repair order"),
}


def transport_counters(registry=None) -> Counters:
    return Counters(registry, COUNTERS)


@dataclass
class Policy:
    """Who may do what: admission 'open' (anyone reads; writes from write_allow) or 'fleet'."""

    admission: str = "open"
    fleet_key: bytes | None = None
    write_allow: frozenset = frozenset()
    rate: float = 5000.0           # requests per second per peer (the config's peer_requests_per_second)
    burst: float = 10000.0
    max_payload: int = 2 << 20
    upload: ByteRate = field(default_factory=lambda: UNLIMITED)   # shared with the gateway (upload_limit)
    cert: bytes | None = None      # this node's fleet certificate, sent in each Welcome (fleet admission)
    upload_for: object = None      # address -> the ByteRate its uploads pay (the governor's, by link class)
    operator: str = ""             # the operator key this node declares in each Welcome (config operator)

    def upload_lane(self, address: str | None) -> ByteRate:
        """What uploads to a peer at address pay from: the governor's lane for its link class, else upload."""
        return self.upload if self.upload_for is None else self.upload_for(address)


@dataclass
class Peer:
    key: bytes
    stamp: float             # when its tokens were last topped up (the server's clock)
    used: float              # its last message
    node: str | None = None
    admitted: bool = False
    tokens: float = 0.0
    paced: int = 0           # bytes of its blocks held for the upload limit
    upload: ByteRate | None = None   # what its blocks pay from (its link class's cap), set on its first message
    operator: str = ""       # the operator key its Hello declared ("": none)

    def take(self, rate: float, burst: float, now: float, n: int = 1) -> bool:
        """Take n requests' tokens, all or none."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True

    def take_up_to(self, n: int, rate: float, burst: float, now: float) -> int:
        """Take up to n requests' tokens; how many were granted."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        granted = min(n, int(self.tokens))
        self.tokens -= granted
        return granted


class PeerBook:
    """The peers' state by User-Id (their CURVE key), least recently used first, bounded; and the refusal log."""

    def __init__(self, burst: float, counters: Counters, clock):
        self.burst = burst
        self.counters = counters
        self.clock = clock
        self.peers: collections.OrderedDict[str, Peer] = collections.OrderedDict()
        self._refusal_logged: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.peers)

    def peer(self, user_id: str) -> Peer:
        """The state of the peer with this User-Id, made if new; the table stays bounded."""
        now = self.clock()
        peers = self.peers
        peer = peers.get(user_id)
        if peer is not None:
            peers.move_to_end(user_id)
            peer.used = now
            return peer
        # the least recently used come first: forget the idle, then the oldest while the table is full
        while peers:
            oldest = next(iter(peers.values()))
            if now - oldest.used <= PEER_IDLE and len(peers) < MAX_PEERS:
                break
            peers.popitem(last=False)
            self.counters.inc("peers_forgotten")
        peer = peers[user_id] = Peer(zmq.utils.z85.decode(user_id), stamp=now, used=now, tokens=self.burst)
        return peer

    def refused(self, peer: Peer, why: str) -> None:
        """Count a refusal and log it, at most once per REFUSAL_LOG_EVERY for one peer, as one safe line."""
        self.counters.inc("refusals")
        who = peer.node or zmq.utils.z85.encode(peer.key).decode()
        last = self._refusal_logged.get(who)
        now = self.clock()
        if last is None or now - last > REFUSAL_LOG_EVERY:
            self._refusal_logged[who] = now
            self._refusal_logged.move_to_end(who)
            while len(self._refusal_logged) > MAX_LOGGED:
                self._refusal_logged.popitem(last=False)
            log.warning("refused %s: %s", printable(who, 80), printable(why))


class Held:
    """Blocks held back for the upload limit: [when, order, route, peer, reply, paid], sent as their time comes,
    the earliest first (a heap: peers on different links pay lanes of different rates, so a block held later may
    be due sooner). paid: the block's bytes were debited from its peer's lane; one not yet paid waits for its
    lane to be no more than its `ahead` in debt (the governor's lanes: a lower rate acts within that long, and
    the bytes it holds are not scheduled at the old rate), then is paid and, if need be, held for its time."""

    def __init__(self):
        self.queue: list = []
        self.bytes = 0
        self._order = 0

    def __bool__(self) -> bool:
        return bool(self.queue)

    def full(self, peer: Peer, size: int) -> bool:
        """Whether holding size more bytes of peer's would pass a bound."""
        if not self.queue:
            return False
        if not peer.paced:   # a peer with nothing held is not crowded out by others, up to a hard bound
            return self.bytes + size > 2 * PACED_BYTES
        return peer.paced + size > PACED_PEER or self.bytes + size > PACED_BYTES

    def hold(self, when: float, route: bytes, peer: Peer, reply, paid: bool = True) -> None:
        self._order += 1
        heapq.heappush(self.queue, (when, self._order, route, peer, reply, paid))
        self.bytes += len(reply.data)
        peer.paced += len(reply.data)

    def next_at(self) -> float:
        return self.queue[0][0]

    def due(self, now: float, everything: bool = False):
        """The (route, peer, reply, paid) of the blocks whose time has come (all of them with everything: a
        shutdown does not wait for the limit), taken off the queue."""
        while self.queue and (self.queue[0][0] <= now or everything):
            _, _, route, peer, reply, paid = heapq.heappop(self.queue)
            self.bytes -= len(reply.data)
            peer.paced -= len(reply.data)
            yield route, peer, reply, paid
