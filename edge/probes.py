"""Probing neighbours: a hello to each every few seconds (its RTT, its uptime record, whether it is alive and
who it is), now and then a throughput probe, and its signed stream entries; an address where another key
answers is an impostor's. A service the agent starts ("probes"); mDNS discovery probes a newly announced
neighbour through the same `probe`."""

import logging
import time

import trio

from edge.discovery.peers import PeerInfo, PeerTable
from edge.discovery.streams import Neighbourhood
from edge.logsafe import printable
from edge.service import Handle
from edge.transport.client import NotInFleet, PeerRefused, TransportError, handshake_fails, open_client

log = logging.getLogger(__name__)
PROBE_SIZE = 256 * 1024   # bytes of a throughput probe ...
PROBE_EVERY = 600.0       # ... at most this often per neighbour (~0.4 KB/s: nothing on a home uplink)
PROBE_TIMEOUT = 2.0       # seconds a hello or a probe may take
DORMANT_PROBES_AT_ONCE = 2   # hellos open at once to neighbours that expired (see PeerTable.dormant)
PROBES_AT_ONCE = 32       # hellos open at once, for verified neighbours and again for the others
CHECKS_AT_ONCE = 4        # impostor checks (a thread each, up to 1.5 s) at once


def connect_to(identity, peers: PeerTable, cert: bytes | None, node: str):
    """A greeted client to the neighbour node (for a live stream's window, asked of its publisher)."""
    peer = peers.get(node)
    if peer is None:
        raise TransportError(f"{node} is not a neighbour now")
    return open_client(identity, peer.endpoint(), peer.node, cert=cert, timeout=PROBE_TIMEOUT)


class Probes:
    """The neighbours' probes: identity and cert say who this node is; what is learnt goes into peers (and the
    stream entries into neighbourhood)."""

    def __init__(self, identity, peers: PeerTable, cert: bytes | None, neighbourhood: Neighbourhood):
        self.identity = identity
        self.peers = peers
        self.cert = cert
        self.neighbourhood = neighbourhood

    async def probe(self, peer: PeerInfo) -> None:
        """Say hello: records the RTT, or a failure. An address where another key answers is an impostor's
        (that address is not used again; the node is rejected only when no other is left); a node that is not in
        this node's fleet, or refuses us, is rejected. Whatever goes wrong ends this probe only."""
        peer.probes += 1
        endpoint = peer.endpoint()
        t0 = time.monotonic()
        try:
            async with open_client(self.identity, endpoint, peer.node, cert=self.cert, timeout=PROBE_TIMEOUT,
                                   max_frame=PROBE_SIZE) as client:   # a probe takes in nothing larger
                peer.rtt = time.monotonic() - t0
                peer.rejected = None
                if client.welcome.free is not None:   # told after the handshake, not announced to the LAN
                    peer.free = client.welcome.free
                peer.answered(endpoint)
                if "streams" in client.welcome.caps:   # its signed stream entries, checked into the table
                    await self.neighbourhood.heard(peer.node, client)
                if "probe" in client.welcome.caps and time.time() - peer.throughput_at >= PROBE_EVERY:
                    try:
                        peer.measured(await client.probe(PROBE_SIZE))
                    except TransportError as exc:   # slower than the timeout allows, or busy: counted as
                        # that slow, and not probed again before PROBE_EVERY (a slow link is not flooded)
                        peer.measured(PROBE_SIZE / PROBE_TIMEOUT)
                        log.info("throughput probe of %s failed: %s", peer.node, exc)
        except (PeerRefused, NotInFleet) as exc:
            peer.failures += 1
            peer.rejected = f"it refused us: {exc}" if isinstance(exc, PeerRefused) else str(exc)
        except TransportError:
            peer.failures += 1
            # no answer: down, busy, or someone else with another key. Only a CURVE handshake that fails with
            # the key of the node id it announced makes that address an impostor's; a slow node is not one
            try:
                fails = await trio.to_thread.run_sync(handshake_fails, self.identity, endpoint, peer.node,
                                                      limiter=_checkers())
            except Exception as exc:   # noqa: BLE001 - no socket to check with (out of descriptors): next round
                log.info("could not check %s at %s: %s", peer.node, endpoint, exc)
                fails = False
            if fails:
                peer.impostor_at(endpoint)
                log.warning("neighbour %s: another key answers at %s%s", peer.node, endpoint,
                            f"; rejected: {peer.rejected}" if peer.rejected else "")
        except Exception as exc:   # noqa: BLE001 - a probe is one task among the agent's: it fails alone
            # (out of descriptors, a socket error); the peer counts it as a failure and the next round retries
            peer.failures += 1
            log.warning("probing %s at %s failed: %s", peer.node, endpoint, printable(repr(exc)))

    async def serve(self, interval: float = 5.0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Probe every neighbour each interval (the RTT, the uptime record, liveness) and forget the silent.

        Neighbours verified on their own key are probed in a lane of their own, and a neighbour still being
        probed is not started again: a flood of announced nodes that never answer (each costs a timeout) cannot
        delay the real neighbours' probes until they expire. Each lane has PROBES_AT_ONCE sockets at most."""
        lanes = {True: trio.CapacityLimiter(PROBES_AT_ONCE), False: trio.CapacityLimiter(PROBES_AT_ONCE),
                 "dormant": trio.CapacityLimiter(DORMANT_PROBES_AT_ONCE)}
        probing: set[str] = set()

        async def probe(peer, lane):
            try:
                async with lanes[lane]:
                    await self.probe(peer)
                if lane == "dormant" and self.peers.revive(peer.node) is not None:
                    log.info("neighbour %s is back at %s", peer.node, peer.endpoint())
            finally:
                probing.discard(peer.node)
        async with trio.open_nursery() as nursery:
            task_status.started(Handle("probes", lambda: {"probing": len(probing),
                                                          "dormant": len(self.peers.dormant)}))
            while True:
                for peer in list(self.peers.peers.values()):
                    # a WAN neighbour that never answered is tried less often (PeerInfo.probe_due)
                    if peer.node not in probing and peer.probe_due(time.monotonic(), interval):
                        probing.add(peer.node)
                        nursery.start_soon(probe, peer, peer.verified)
                # neighbours expired a while ago, in a lane of their own (each dead one costs a timeout)
                for peer, _ in list(self.peers.dormant.values()):
                    if peer.node not in probing:
                        probing.add(peer.node)
                        nursery.start_soon(probe, peer, "dormant")
                await trio.sleep(min(interval, self.peers.expiry / 2))
                for gone in self.peers.expire():
                    log.info("neighbour %s expired (silent for %.0f s)", gone, self.peers.expiry)


_CHECKERS = trio.lowlevel.RunVar("handshake_checkers")


def _checkers() -> trio.CapacityLimiter:
    """The threads that may wait in handshake_fails at once: probes of silent nodes must not take every worker
    thread the store's reads and writes need."""
    try:
        return _CHECKERS.get()
    except LookupError:
        _CHECKERS.set(trio.CapacityLimiter(CHECKS_AT_ONCE))
        return _CHECKERS.get()
