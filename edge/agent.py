"""The agent: one nursery of services started in order, stopped gracefully in reverse order within a deadline.

renewal -> fetches (those run for gateway readers) -> transport (serve blocks) -> control socket (status,
peers, fetch) -> metrics -> asyncio bridge -> WebRTC -> gateway (HTTP) -> discovery (mDNS) -> probes -> watchdog.
Each service reports a handle (edge.service.Handle: stats and drain); the agent keeps them in its ServiceTree. A
signal (SIGTERM, SIGINT) drains them, the last started first, all within shutdown_grace seconds, then ends them;
blocks are written atomically whatever happens.
Right after the transport, "streams" keeps this node's signed stream entries up to date for its neighbours.
Before it, "fanout" (the PUB/SUB fan-out of live segments, edge/media/fanout.py) and "live" (the live streams
the agent runs, edge/media/liveservice.py).
"""

import contextlib
import functools
import errno
import logging
import math
import os
import signal
import time

import trio
import zmq

import edge
from edge import datadir, netif, systemd
from edge.config import Config, store_settings
from edge.control import serve_control
from edge.discovery.peers import PeerInfo, PeerTable
from edge.discovery.streams import Neighbourhood
from edge.media.fanout import Fanout
from edge.media.liveservice import LiveService
from edge.errors import EdgeError, first_error
from edge.fetch import Background, Fetch
from edge.fleet.certificates import check_certificate
from edge.fleet.renewal import serve_renewal
from edge.identity import KEY_FILE, Identity, public_key_of
from edge.metrics import serve_metrics
from edge.service import Counters, Handle, Registry, ServiceTree
from edge.store import Store
from edge.store.service import AsyncStore
from edge.ipld.cid import parse_cid
from edge.logsafe import printable
from edge.transport.client import NotInFleet, PeerRefused, TransportError, handshake_fails, open_client
from edge.bridge import serve_bridge
from edge.gateway import FetchBudget, Gateway, gateway_counters
from edge.ratelimit import ByteRate
from edge.transport.http import serve_http
from edge.transport.accounting import Policy, transport_counters
from edge.transport.requests import CAPS
from edge.transport.server import serve_transport
from edge.transport.webrtc import WebRTCService, serve_webrtc, webrtc_counters

log = logging.getLogger(__name__)
STUCK_LIMIT = 20.0   # seconds on one serving turn before the watchdog stops being pinged
PROBE_SIZE = 256 * 1024   # bytes of a throughput probe ...
PROBE_EVERY = 600.0       # ... at most this often per neighbour (~0.4 KB/s: nothing on a home uplink)
PROBE_TIMEOUT = 2.0       # seconds a hello or a probe may take
RATE_SAMPLE = 1 << 20     # a fetch's share counts as a throughput sample from this many bytes on
DORMANT_PROBES_AT_ONCE = 2   # hellos open at once to neighbours that expired (see PeerTable.dormant)
PROBES_AT_ONCE = 32       # hellos open at once, for verified neighbours and again for the others
CHECKS_AT_ONCE = 4        # impostor checks (a thread each, up to 1.5 s) at once
FETCH_COUNTERS = {"blocks": ("blocks_fetched_total", "blocks fetched from neighbours"),
                  "bytes": ("bytes_fetched_total", "block bytes fetched from neighbours"),
                  "failures": ("fetch_failures_total", "blocks a neighbour failed to give")}
# how `hearth run` spells each port's flag, and what 0 means there
PORT_FLAGS = {"transport_port": ("--port", "0 picks a free port"),
              "gateway_port": ("--gateway-port", "0 turns the gateway off"),
              "metrics_port": ("--metrics-port", "0 turns metrics off")}


class CannotListen(EdgeError):
    """A port the agent is set to listen on is taken by another program (or needs privileges)."""


class Agent:
    def __init__(self, config: Config, identity: Identity, store: Store, listen: netif.Listen | None = None):
        self.config = config
        self.identity = identity
        self.store = AsyncStore(store)   # Trio code awaits the store: its SQLite and statvfs run in threads
        self.listen = listen                   # where the services listen (None: not serving, as in tests)
        self.started = time.time()
        self.peers = PeerTable(identity.node_id, config.peer_expiry)
        self.cert = None
        if config.admission == "fleet":
            # a relative path (as first boot and enrollment write it) is in the data directory
            with open(os.path.join(config.data_dir, config.fleet_cert), "rb") as f:
                self.cert = f.read()
            check_certificate(self.cert, public_key_of(config.fleet_key), identity.node_id)
        for spec in config.static_peers:
            node, _, where = spec.partition("@")
            host, _, port = where.rpartition(":")
            public_key_of(node)
            self.peers.seen(PeerInfo(node, [host], int(port)))
        self.peers.expiry = math.inf if config.static_peers and not config.mdns else config.peer_expiry
        self.neighbourhood = Neighbourhood(identity, self.peers, self._connect)   # the streams, ours and theirs
        self.fanout = Fanout(identity, self.peers, self._connect, direct=config.live_direct,   # live PUB/SUB
                             relay=config.live_relay, upload_limit=config.upload_limit, table=self.neighbourhood.table,
                             store=store)
        self.policy = Policy(admission=config.admission,
                             fleet_key=public_key_of(config.fleet_key) if config.fleet_key else None,
                             write_allow=frozenset(config.write_allow), rate=config.peer_requests_per_second,
                             burst=2 * config.peer_requests_per_second, max_payload=config.max_frame,
                             upload=ByteRate(config.upload_limit), cert=self.cert)
        # one registry feeds `hearth status` and /metrics; the services' handles are kept in start order
        self.registry = Registry()
        self.services = ServiceTree()
        self.fetched = Counters(self.registry, FETCH_COUNTERS)
        self.gateway_counters = gateway_counters(self.registry)
        self.webrtc_counters = webrtc_counters(self.registry)
        self.transport_counters = transport_counters(self.registry)
        self._gauges()
        self._background: dict = {}            # root -> Background fetch running

    def _gauges(self) -> None:
        reg = self.registry
        reg.gauge("peers", "neighbours known", lambda: len(self.peers.peers))
        reg.gauge("webrtc_sessions", "browsers connected over WebRTC",
                  lambda: self.services.get("webrtc").stats()["sessions"] if "webrtc" in self.services else 0)
        self._store_gauges = {
            "hits": reg.counter("block_cache_hits_total", "blocks served from memory (read and checked before)"),
            "cached": reg.gauge("block_cache_bytes", "bytes of blocks kept in memory"),
            "blocks": reg.gauge("store_blocks", "blocks in the store"),
            "bytes": reg.gauge("store_bytes", "bytes in the store")}

    # what the control socket and metrics show -----------------------------------------------------------

    async def status(self) -> dict:
        stat = await self.store.stat()
        transport, gateway = self.services.get("transport"), self.services.get("gateway")
        renewal = self.services.get("renewal")
        return {"node": self.identity.node_id, "version": edge.__version__, "uptime": round(time.time() - self.started, 1),
                "endpoint": transport.endpoint if transport else None, "admission": self.config.admission,
                "peers": len(self.peers.peers), "store": stat, "served": transport.stats() if transport else {},
                "fetched": self.fetched.values(), "gateway_port": gateway.port if gateway else None,
                "gateway_url": _gateway_url(self.listen, gateway.port) if gateway else None,
                "certificate": (renewal.stats() or None) if renewal else None, "services": self.services.stats()}

    def peer_list(self) -> list[dict]:
        return [p.as_dict() for p in sorted(self.peers.peers.values(), key=lambda p: -p.score)]

    async def refresh(self) -> None:
        """Bring the store's gauges up to date before /metrics is rendered."""
        stat = await self.store.stat()
        hot = stat["hot"] or {"hits": 0, "bytes": 0}   # the cache is off with block_cache = 0
        g = self._store_gauges
        g["hits"].value = hot["hits"]
        g["cached"].set(hot["bytes"])
        g["blocks"].set(stat["blocks"])
        g["bytes"].set(stat["bytes"])

    # probes ----------------------------------------------------------------------------------------------------

    def _connect(self, node: str):
        """A greeted client to the neighbour node (for a live stream's window, asked of its publisher)."""
        peer = self.peers.get(node)
        if peer is None:
            raise TransportError(f"{node} is not a neighbour now")
        return open_client(self.identity, peer.endpoint(), peer.node, cert=self.cert, timeout=PROBE_TIMEOUT)

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

    async def serve_probes(self, interval: float = 5.0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
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
                    if peer.node not in probing:
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

    # fetching -------------------------------------------------------------------------------------------------

    def fetch_later(self, root) -> Background:
        """Fetch root's DAG on its own (one fetch per root at a time); readers wait on the returned handle."""
        job = self._background.get(root)
        if job is None:
            job = self._background[root] = Background(root)

            async def run():
                try:
                    with job.scope:   # job.stop() (a spent budget) ends the fetch
                        await self.fetch_dag(root, on_stored=job.progressed, job=job)
                    job.finish(job.stopped)
                except Exception as exc:   # noqa: BLE001 - the readers say what is missing; the log says why
                    log.info("fetching %s from neighbours failed: %s", root, exc)
                    job.finish(exc)
                finally:
                    del self._background[root]
            self.services.get("fetches").nursery.start_soon(run)
        return job

    async def serve_fetches(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The fetches that run on their own (for gateway readers) as a service: reports a Handle whose nursery
        they run in. At shutdown they are not waited for: readers are gone, and what was stored stays."""
        async with trio.open_nursery() as nursery:
            handle = Handle("fetches", lambda: {"running": len(self._background)})
            handle.nursery = nursery
            task_status.started(handle)
            await trio.sleep_forever()

    async def fetch(self, root) -> int:
        """Fetch root's DAG for a command (`hearth get`/`cat`): joins the gateway's fetch of that root if one
        runs (each block fetched once), else fetches it here, stopping if the command goes away."""
        job = self._background.get(root)
        return await (job.finished() if job is not None else self.fetch_dag(root))

    async def fetch_dag(self, root, peers: int = 4, on_stored=None, job: Background | None = None) -> int:
        """Fetch every block under root this node lacks from the best `peers` neighbours (one connection each
        for the whole DAG); returns how many blocks were fetched. Readers of job can move the fetch to the
        block they wait for."""
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for peer in self.peers.best(peers):
                try:
                    clients[peer.node] = await stack.enter_async_context(
                        open_client(self.identity, peer.endpoint(), peer.node, cert=self.cert, timeout=10))
                except (TransportError, PeerRefused) as exc:
                    log.info("neighbour %s unavailable for fetching: %s", peer.node, exc)
            score = {p.node: p.score for p in self.peers.peers.values()}
            fetch = Fetch(self.store, clients, score, self.fetched, on_stored)
            if job is not None:
                job.attach(fetch)
            try:
                return await fetch.dag(root)
            finally:   # what each neighbour gave, and how fast, is a throughput sample for its score
                for node, (nbytes, seconds) in fetch.rates.items():
                    peer = self.peers.peers.get(node)
                    if peer is not None and nbytes >= RATE_SAMPLE and seconds > 0:
                        peer.measured(nbytes / seconds)


_CHECKERS = trio.lowlevel.RunVar("handshake_checkers")


def _checkers() -> trio.CapacityLimiter:
    """The threads that may wait in handshake_fails at once: probes of silent nodes must not take every worker
    thread the store's reads and writes need."""
    try:
        return _CHECKERS.get()
    except LookupError:
        _CHECKERS.set(trio.CapacityLimiter(CHECKS_AT_ONCE))
        return _CHECKERS.get()


async def run_agent(config: Config, *, task_status=trio.TASK_STATUS_IGNORED):
    """Run the node until cancelled or signalled; reports the Agent once every service is up.

    Refuses, each in one line: a data directory without its marker (datadir.NotADataDir: an unmounted disk?),
    one another agent holds (datadir.AgentRunning), a port it cannot listen on (CannotListen)."""
    datadir.require(config.data_dir)
    with datadir.AgentLock(config.data_dir):   # held until the agent has stopped and closed the store
        try:
            await _run(config, task_status=task_status)
        except BaseExceptionGroup as group:
            failed = first_error(group)
            if isinstance(failed, CannotListen):   # a service that could not start: its line, not a group
                raise failed from None
            raise


@contextlib.contextmanager
def _listening(setting: str, port: int):
    """A port that cannot be bound becomes CannotListen naming the port, its setting and its flag."""
    try:
        yield
    except (OSError, zmq.ZMQError) as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "is already in use (by another hearth agent or another program)"
        elif exc.errno == errno.EACCES:
            why = "needs privileges this process lacks (a port below 1024)"
        else:
            raise
        flag, zero = PORT_FLAGS[setting]
        raise CannotListen(f"port {port} ({setting}) {why}: choose another with `hearth run {flag} N` ({zero}) "
                           f"or {setting} in hearth.toml") from None


def _gateway_url(listen: netif.Listen, port: int) -> str:
    """The player's address for people on the LAN: an address of this host the gateway listens on."""
    host = listen.url_host
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _run(config: Config, *, task_status=trio.TASK_STATUS_IGNORED):
    """run_agent's services in one nursery, started in order (the data directory already checked and locked),
    drained in reverse order on a signal."""
    identity = Identity.load(os.path.join(config.data_dir, KEY_FILE))
    listen = netif.resolve(config.listen)   # before anything is opened: a bad value is one line
    # opened and closed in a thread: the catalog's open (and its schema) and the writer's last batch are SQLite
    store = await trio.to_thread.run_sync(functools.partial(
        Store, config.data_dir, hot_bytes=config.block_cache, **store_settings(config)))   # the one quota
    agent = Agent(config, identity, store, listen)
    services = agent.services
    try:
        async with trio.open_nursery() as nursery:

            async def start(name, fn, /, *args, **kwargs):
                return await services.start(nursery, name, fn, *args, **kwargs)
            await start("renewal", serve_renewal, agent)   # the revocation list is honoured before anyone is admitted
            await start("fetches", agent.serve_fetches)
            with _listening("transport_port", config.transport_port):
                transport = await start("transport", serve_transport, store, identity, agent.policy,
                                        f"tcp://{listen.binds[0]}:{config.transport_port}",
                                        more_hosts=listen.binds[1:], counters=agent.transport_counters)
            live = LiveService(store, identity, agent.fanout, config)   # the live streams the agent runs
            await start("fanout", agent.fanout.serve, listen.binds, config.live_port)
            transport.server.live = agent.fanout   # the serving thread answers LiveWant through it
            await start("live", live.serve)
            await start("streams", agent.neighbourhood.serve, agent.store,
                        lambda entries: setattr(transport.server, "streams", entries), live_rows=live.rows)

            async def status(request):
                return await agent.status()

            async def peers(request):
                return agent.peer_list()

            async def fetch(request):
                return {"fetched": await agent.fetch(parse_cid(str(request.get("cid", ""))))}
            await start("control", serve_control, os.path.join(config.data_dir, "control.sock"),
                        {"status": status, "peers": peers, "fetch": fetch, "live_publish": live.publish,
                         "live_stop": live.stop, "live_status": live.status})
            if config.metrics_port:
                with _listening("metrics_port", config.metrics_port):
                    metrics = await start("metrics", serve_metrics, config.metrics_port, agent.registry,
                                          refresh=agent.refresh)
                log.info("metrics at http://127.0.0.1:%d/metrics", metrics.port)
            bridge = None
            if config.mdns or config.gateway_port:
                bridge = (await start("bridge", serve_bridge)).bridge
            if config.gateway_port:
                webrtc = WebRTCService(store.get, config.ice_servers, addresses=None if listen.every else listen.lan,
                                       counters=agent.webrtc_counters)
                await start("webrtc", serve_webrtc, bridge, webrtc)
                gateway = Gateway(store, fetch=agent.fetch_dag, fetch_later=agent.fetch_later,
                                  webrtc=(bridge, webrtc), counters=agent.gateway_counters,
                                  neighbourhood=agent.neighbourhood,
                                  live=(live, agent.fanout),
                                  budget=FetchBudget(config.gateway_fetch_client, config.gateway_fetch_total))
                with _listening("gateway_port", config.gateway_port):
                    http = await start("gateway", serve_http, gateway, config.gateway_port, host=listen.binds,
                                       upload=agent.policy.upload, name="gateway")
                log.info("gateway (player, streams, /ipfs/) at %s", _gateway_url(listen, http.port))
            if config.mdns and not listen.every and not listen.lan:
                log.info("mDNS is off: listen = %r names no address neighbours can reach", config.listen)
            elif config.mdns:
                from edge.discovery.mdns import serve_discovery
                await start("discovery", serve_discovery, bridge, agent.peers, identity.node_id,
                            int(transport.endpoint.rsplit(":", 1)[1]), CAPS, probe=agent.probe,
                            lan=None if listen.every else listen.lan)
            await start("probes", agent.serve_probes)
            if config.fleet_broker:   # neighbours across homes and telemetry through the fleet's broker
                from edge.fleet.plane import serve_plane
                await start("fleet", serve_plane, agent, CAPS)
            await start("watchdog", _watchdog, transport)
            systemd.notify("READY=1\nSTATUS=serving")
            log.info("node %s ready: blocks at %s, data in %s", identity.node_id, transport.endpoint, config.data_dir)
            if "gateway" in services:   # the last line `hearth run` shows: where to point a browser
                log.info("player at %s", _gateway_url(listen, services.get("gateway").port))
            task_status.started(agent)
            await _until_signal(config.shutdown_grace, nursery.cancel_scope, services)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)


async def _watchdog(transport, stuck_limit: float = STUCK_LIMIT, *, task_status=trio.TASK_STATUS_IGNORED):
    """Ping systemd's watchdog while the node can serve: not while the transport's serving thread is stuck on
    one turn (a read that never returns), so systemd restarts a node that only looks alive."""
    interval = systemd.watchdog_interval()
    task_status.started(Handle("watchdog", lambda: {"interval": interval, "stuck_for": transport.stuck_for()}))
    if interval is None:
        return
    warned = False
    while True:
        stuck = transport.stuck_for()
        if stuck < stuck_limit:
            systemd.notify("WATCHDOG=1")
            warned = False
        elif not warned:
            log.error("the transport has been stuck for %.0f s (a disk that does not answer?); no longer telling "
                      "the watchdog all is well", stuck)
            warned = True
        await trio.sleep(interval)


async def _until_signal(grace: float, scope: trio.CancelScope, services: ServiceTree):
    """On SIGTERM or SIGINT, drain the services in reverse start order within grace seconds, then end them."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: stopping (at most %.1f s)", signal.Signals(signum).name, grace)
            systemd.notify("STOPPING=1")
            # every wait in stop() ends at the deadline (a drain still running is cut, the rest cancelled), so
            # the stop itself is bounded and can say which services it cut
            await services.stop(trio.current_time() + grace)
            scope.cancel()
            return
