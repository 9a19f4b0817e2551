"""The agent: one nursery of services started in order, stopped gracefully in reverse order within a deadline.

renewal -> fetches (those run for gateway readers) -> transport (serve blocks) -> jobs, offloads (transcodes for
and by neighbours) -> status page (bandwidth history) -> control socket (status, peers, fetch, jobs, page) ->
metrics -> asyncio bridge -> WebRTC -> gateway (HTTP) -> discovery (mDNS) -> probes -> watchdog.
Each service reports a handle (edge.service.Handle: stats and drain); the agent keeps them in its ServiceTree. A
signal (SIGTERM, SIGINT) drains them, the last started first, all within shutdown_grace seconds, then ends them;
blocks are written atomically whatever happens.
Right after the transport, "streams" keeps this node's signed stream entries up to date for its neighbours.
After the watchdog, "rollouts" (update_backend set, in a fleet with a broker) takes staged rollouts from the broker.
Before "streams", "fanout" (the PUB/SUB fan-out of live segments, edge/media/fanout.py) and "live" (the live
streams the agent runs, edge/media/liveservice.py).
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
from edge.control import agent_handlers, serve_control
from edge.discovery.peers import PeerInfo, PeerTable
from edge.discovery.streams import Neighbourhood
from edge.media.fanout import Fanout
from edge.media.liveservice import LiveService
from edge.errors import EdgeError, first_error
from edge.fetch import Background, Fetch, FetchError
from edge.fleet.certificates import check_certificate
from edge.fleet.renewal import serve_renewal
from edge.identity import KEY_FILE, Identity, public_key_of
from edge.metrics import serve_metrics
from edge.service import Counters, Handle, Registry, ServiceTree
from edge.store import Store
from edge.protection.owner import Protector, serve_renewals
from edge.protection.reader import ReadFailed, Reader
from edge.protection.custody import start_custody
from edge.protection.newholder import start_new_holder
from edge.protection.leave import control_handlers as leave_handlers
from edge.protection.repair import attach as attach_repairs, serve_moves
from edge.store.pieces import PieceStore, serve_leases
from edge.store.service import AsyncStore
from edge.media.jobs import Worker
from edge.media.offload import Offloads
from edge.transport.client import open_clients
from edge.bridge import serve_bridge
from edge.gateway import FetchBudget, Gateway, gateway_counters
from edge.governor.caps import UP
from edge.governor.governor import Governor
from edge.governor.governor import from_config as governor_from_config
from edge.governor.links import WAN
from edge.governor.service import serve_governor
from edge.transport.http import serve_http
from edge.transport.accounting import Policy, transport_counters
from edge.probes import Probes, connect_to
from edge.transport.requests import CAPS
from edge.transport.server import serve_transport
from edge.transport.webrtc import WebRTCService, serve_webrtc, webrtc_counters
from edge.status.service import serve_status

log = logging.getLogger(__name__)
STUCK_LIMIT = 20.0   # seconds on one serving turn before the watchdog stops being pinged
RATE_SAMPLE = 1 << 20     # a fetch's share counts as a throughput sample from this many bytes on
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
    def __init__(self, config: Config, identity: Identity, store: Store, listen: netif.Listen | None = None,
                 governor: Governor | None = None):
        self.config = config
        # the caps by link class, the schedule, the back-off, the SD-wear budget (made in a thread by _run)
        self.governor = governor if governor is not None else governor_from_config(config)
        self.identity = identity
        self.store = AsyncStore(store)   # Trio code awaits the store: its SQLite and statvfs run in threads
        self.pieces = None               # the PieceStore of pieces held for neighbours, once run_agent opened it
        self.protector = None            # the owner's side of this node's protected pins (edge/protection/owner.py)
        self.reader = None               # rebuilds protected pins from pieces (edge/protection/reader.py)
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
        # the streams, ours and theirs (a live window is asked of its publisher)
        self.neighbourhood = Neighbourhood(identity, self.peers,
                                           functools.partial(connect_to, identity, self.peers, self.cert))
        self.probes = Probes(identity, self.peers, self.cert, self.neighbourhood)
        self.fanout = Fanout(identity, self.peers, functools.partial(connect_to, identity, self.peers, self.cert),
                             direct=config.live_direct, relay=config.live_relay,   # live PUB/SUB
                             upload_limit=config.lan_upload_limit, table=self.neighbourhood.table, store=store)
        self.policy = Policy(admission=config.admission,
                             fleet_key=public_key_of(config.fleet_key) if config.fleet_key else None,
                             write_allow=frozenset(config.write_allow), rate=config.peer_requests_per_second,
                             burst=2 * config.peer_requests_per_second, max_payload=config.max_frame,
                             upload=self.governor.caps.lanes[(UP, WAN)], cert=self.cert,
                             upload_for=self.governor.upload_for, operator=config.operator)
        # one registry feeds `hearth status` and /metrics; the services' handles are kept in start order
        self.registry = Registry()
        self.services = ServiceTree()
        self.fetched = Counters(self.registry, FETCH_COUNTERS)
        self.gateway_counters = gateway_counters(self.registry)
        self.webrtc_counters = webrtc_counters(self.registry)
        self.transport_counters = transport_counters(self.registry)
        self._gauges()
        self.governor.register(self.registry)
        self._background: dict = {}            # root -> Background fetch running
        self.fetches: set = set()              # every Fetch running (for their progress)
        self.worker = Worker(self)             # transcodes for neighbours (transcode_for)
        self.offloads = Offloads(self)         # transcodes this node hands to neighbours

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
        reg.gauge("pieces_held", "pieces of neighbours' protected pins held here",
                  lambda: self.pieces.stat()["pieces"] if self.pieces else 0)
        reg.gauge("pieces_held_bytes", "bytes of neighbours' pieces held here (within share)",
                  lambda: self.pieces.stat()["bytes"] if self.pieces else 0)

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
                "certificate": (renewal.stats() or None) if renewal else None, "services": self.services.stats(),
                "governor": self.governor.figures(),
                "protected": await self.protector.summary() if self.protector else [],
                "fetches": [f.progress() for f in self.fetches]}

    def wan_target(self) -> tuple[str, int] | None:
        """A WAN neighbour's transport address (host, port), for the governor's delay signal; None if none."""
        for peer in self.peers.best(8):
            host = _host(peer.endpoint())
            if self.governor.classifier.classify(host) == WAN:
                return host, int(peer.endpoint().rsplit(":", 1)[1])
        return None

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

    # fetching -------------------------------------------------------------------------------------------------

    def fetch_later(self, root) -> Background:
        """Fetch root's DAG on its own (one fetch per root at a time); readers wait on the returned handle."""
        job = self._background.get(root)
        if job is None:
            job = self._background[root] = Background(root)

            async def run():
                try:
                    with job.scope:   # job.stop() (a spent budget) ends the fetch
                        try:
                            await self.fetch_dag(root, on_stored=job.progressed, job=job)
                        except FetchError as exc:   # no neighbour has the blocks: a protected pin's pieces?
                            await self._rebuild(root, exc, job)
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
        runs (each block fetched once), else fetches it here, stopping if the command goes away. When no
        neighbour can give its blocks and root is a protected pin, its blocks are rebuilt from the pieces its
        holders keep (edge/protection/reader.py)."""
        job = self._background.get(root)
        if job is not None:
            return await job.finished()
        try:
            return await self.fetch_dag(root)
        except FetchError as exc:
            return await self._rebuild(root, exc)

    async def _rebuild(self, root, failed: FetchError, job: Background | None = None) -> int:
        """After a fetch from neighbours failed: rebuild root from the pieces of its holders if it is a protected
        pin (the blocks stored segment by segment, job's readers woken after each); else raise failed."""
        if self.reader is None:
            raise failed
        try:
            if job is None:
                done = await self.reader.read(root)
            else:
                done = await self.reader.read(root, on_stored=job.rebuilt,
                                              wanted=lambda: job.wanted)
        except ReadFailed as why:
            log.info("%s: not rebuilt from pieces either: %s", root, why)
            raise failed from None
        log.info("rebuilt %s from %d pieces of its holders (%d segments, %d decoded, %d pieces failed)", root,
                 done["pieces"], done["segments"], done["decoded"], done["failed"])
        return done["blocks"]

    async def fetch_dag(self, root, peers: int = 4, on_stored=None, job: Background | None = None) -> int:
        """Fetch every block under root this node lacks from the best `peers` neighbours (one connection each
        for the whole DAG); returns how many blocks were fetched. Readers of job can move the fetch to the
        block they wait for."""
        # a WAN neighbour that no handshake ever reached sits behind a NAT without a mapping (only WebRTC
        # reaches it): dialling it would cost the whole timeout before the fetch starts, unless it serves
        # over WebRTC ("rtc" in its presence) and this node can tunnel there (edge/transport/tunnel.py)
        tunnel = self.services.get("tunnel")

        def endpoint_of(peer):
            async def endpoint():
                if peer.wan and not peer.verified and tunnel is not None:
                    return await tunnel.endpoint(peer.node)
                return peer.endpoint()
            return endpoint
        dials = {p.node: endpoint_of(p) for p in self.peers.best() if p.verified or not p.wan or
                 (tunnel is not None and "rtc" in p.caps)}
        dials = dict(list(dials.items())[:peers])
        # dialled at once: a neighbour gone a moment ago (not yet expired) costs one timeout, not one each
        def failed(node, exc):
            log.info("neighbour %s unavailable for fetching: %s", node, exc)
        async with open_clients(self.identity, dials, cert=self.cert, timeout=10, on_fail=failed) as clients:
            score = {p.node: p.score for p in self.peers.peers.values()}
            downloads = {p.node: self.governor.download_for(_host(p.endpoint())) for p in self.peers.best(peers)}
            fetch = Fetch(self.store, {n: clients[n] for n in dials if n in clients}, score, self.fetched, on_stored,
                          downloads=downloads, wear=self.governor.wear)   # best first, as dialled
            if job is not None:
                job.attach(fetch)
            self.fetches.add(fetch)
            try:
                return await fetch.dag(root)
            finally:   # what each neighbour gave, and how fast, is a throughput sample for its score
                self.fetches.discard(fetch)
                for node, (nbytes, seconds) in fetch.rates.items():
                    peer = self.peers.peers.get(node)
                    if peer is not None and nbytes >= RATE_SAMPLE and seconds > 0:
                        peer.measured(nbytes / seconds)


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


def _host(endpoint: str) -> str:
    """tcp://host:port or tcp://[v6]:port -> the host."""
    return endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")


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
    governor = await trio.to_thread.run_sync(governor_from_config, config)   # it reads the interfaces
    # the pieces this node holds for neighbours' protected pins, within `share` (edge/store/pieces.py)
    pieces = await trio.to_thread.run_sync(PieceStore, config.data_dir, config.share)
    agent = Agent(config, identity, store, listen, governor)
    agent.pieces = pieces
    protector = agent.protector = Protector(agent.store, identity, agent.peers, config.data_dir, agent.cert)
    attach_repairs(protector, config)   # audits feed holders' health and reputation; lost pieces rebuilt
    agent.reader = Reader(agent.store, identity, agent.peers, config.data_dir, agent.cert)
    services = agent.services
    try:
        async with trio.open_nursery() as nursery:

            async def start(name, fn, /, *args, **kwargs):
                return await services.start(nursery, name, fn, *args, **kwargs)
            await start("renewal", serve_renewal, agent)   # the revocation list is honoured before anyone is admitted
            await start("fetches", agent.serve_fetches)
            await start("governor", serve_governor, agent.governor, backoff=config.backoff,
                        probe=config.backoff_probe, wan_target=agent.wan_target)
            with _listening("transport_port", config.transport_port):
                transport = await start("transport", serve_transport, store, identity, agent.policy,
                                        f"tcp://{listen.binds[0]}:{config.transport_port}",
                                        more_hosts=listen.binds[1:], counters=agent.transport_counters,
                                        pieces=pieces)
            await serve_moves(start, protector, transport)   # leaving holders' Moved (edge/protection/repair.py)
            await start_custody(start, agent, config)   # pins whose owner is gone (edge/protection/custody.py)
            await start_new_holder(start, agent, config, transport)   # repairs asked of this node (newholder.py)
            live = LiveService(store, identity, agent.fanout, config)   # the live streams the agent runs
            live.agent = agent                                          # --on NODE|auto: neighbours cut it
            await start("fanout", agent.fanout.serve, listen.binds, config.live_port)
            transport.server.live = agent.fanout   # the serving thread answers LiveWant through it
            await start("live", live.serve)
            await start("streams", agent.neighbourhood.serve, agent.store,
                        lambda entries: setattr(transport.server, "streams", entries), live_rows=live.rows)
            await start("pieces", serve_leases, pieces)

            await start("jobs", agent.worker.serve)
            transport.server.jobs = agent.worker   # the serving thread answers job messages through it
            await start("offloads", agent.offloads.serve)
            page = await start("status", serve_status, agent)   # the status page: its document, bandwidth, admin
            await start("control", serve_control, os.path.join(config.data_dir, "control.sock"),
                        {**agent_handlers(agent), "page": lambda r: page.report.document(),
                         **leave_handlers(agent, config), "live_publish": live.publish, "live_stop": live.stop,
                         "live_status": live.status})
            if config.metrics_port:
                with _listening("metrics_port", config.metrics_port):
                    metrics = await start("metrics", serve_metrics, config.metrics_port, agent.registry,
                                          refresh=agent.refresh)
                log.info("metrics at http://127.0.0.1:%d/metrics", metrics.port)
            bridge = None
            if config.mdns or config.gateway_port or (config.fleet_broker and config.ice_servers):
                bridge = (await start("bridge", serve_bridge)).bridge
            if config.gateway_port:
                webrtc = WebRTCService(store.get, config.ice_servers, addresses=None if listen.every else listen.lan,
                                       counters=agent.webrtc_counters)
                await start("webrtc", serve_webrtc, bridge, webrtc)
                gateway = Gateway(store, fetch=agent.fetch_dag, fetch_later=agent.fetch_later,
                                  webrtc=(bridge, webrtc), counters=agent.gateway_counters,
                                  neighbourhood=agent.neighbourhood,
                                  budget=FetchBudget(config.gateway_fetch_client, config.gateway_fetch_total),
                                  status=page.report.document, admin=page.admin, live=(live, agent.fanout))
                with _listening("gateway_port", config.gateway_port):
                    http = await start("gateway", serve_http, gateway, config.gateway_port, host=listen.binds,
                                       upload=agent.governor.upload_for, name="gateway")
                log.info("gateway (status page, /watch/, streams, /ipfs/) at %s", _gateway_url(listen, http.port))
            if config.mdns and not listen.every and not listen.lan:
                log.info("mDNS is off: listen = %r names no address neighbours can reach", config.listen)
            elif config.mdns:
                from edge.discovery.mdns import serve_discovery
                await start("discovery", serve_discovery, bridge, agent.peers, identity.node_id,
                            int(transport.endpoint.rsplit(":", 1)[1]), CAPS, probe=agent.probes.probe,
                            lan=None if listen.every else listen.lan)
            await start("probes", agent.probes.serve)
            await start("renewals", serve_renewals, protector)
            if config.port_mapping == "auto":   # the transport's port on the home router (edge/fleet/portmap.py)
                from edge.fleet.portmap import serve_portmap
                await start("portmap", serve_portmap, agent)
            if config.fleet_broker:   # neighbours across homes and telemetry through the fleet's broker
                from edge.fleet.plane import serve_plane
                caps = CAPS
                if config.ice_servers:   # WebRTC across NATs, signalled through the broker
                    from edge.fleet.mqtt import parse_broker
                    from edge.fleet.records import fleet_name
                    from edge.transport.tunnel import CAP, serve_tunnels
                    await start("tunnel", serve_tunnels, agent, bridge, parse_broker(config.fleet_broker),
                                fleet_name(config.fleet_key))
                    caps = CAPS + (CAP,)
                await start("fleet", serve_plane, agent, caps)
            await start("watchdog", _watchdog, transport)
            if config.update_backend != "none" and config.fleet_broker and config.admission == "fleet":
                from edge.provisioning.device.rollout import serve_rollouts   # staged rollouts from the broker
                await start("rollouts", serve_rollouts, agent)
            elif config.update_backend != "none":   # its reports must carry the node's fleet certificate
                log.warning("update_backend = %s: rollouts come only from a fleet's broker; set fleet_broker and "
                            "admission = 'fleet' (with fleet_key and fleet_cert)", config.update_backend)
            systemd.notify("READY=1\nSTATUS=serving")
            log.info("node %s ready: blocks at %s, data in %s", identity.node_id, transport.endpoint, config.data_dir)
            if "gateway" in services:   # the last lines `hearth run` shows: where to point a browser
                url = _gateway_url(listen, services.get("gateway").port)
                log.info("status page at %s", url)
                log.info("player at %swatch/", url)
            task_status.started(agent)
            await _until_signal(config.shutdown_grace, nursery.cancel_scope, services)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pieces.close)
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
