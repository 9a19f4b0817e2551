"""The agent: one nursery of services started in order, stopped gracefully within a deadline.

transport (serve blocks) -> control socket (status, peers, fetch) -> metrics -> discovery (mDNS) -> watchdog.
A signal (SIGTERM, SIGINT) stops new work and lets running requests finish for up to shutdown_grace seconds;
blocks are written atomically whatever happens.
"""

import contextlib
import errno
import functools
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
from edge.enroll import serve_renewal
from edge.errors import EdgeError, first_error
from edge.fetch import Background, Fetch
from edge.fleet import check_certificate
from edge.identity import KEY_FILE, Identity, public_key_of
from edge.metrics import serve_metrics
from edge.store import Store
from edge.store.service import AsyncStore
from edge.ipld.cid import parse_cid
from edge.logsafe import printable
from edge.transport.client import NotInFleet, PeerRefused, TransportError, handshake_fails, open_client
from edge.gateway import FetchBudget, Gateway
from edge.ratelimit import ByteRate
from edge.transport.http import serve_http
from edge.transport.server import CAPS, Policy, serve_transport

log = logging.getLogger(__name__)
STUCK_LIMIT = 20.0   # seconds on one serving turn before the watchdog stops being pinged
PROBE_SIZE = 256 * 1024   # bytes of a throughput probe ...
PROBE_EVERY = 600.0       # ... at most this often per neighbour (~0.4 KB/s: nothing on a home uplink)
PROBE_TIMEOUT = 2.0       # seconds a hello or a probe may take
RATE_SAMPLE = 1 << 20     # a fetch's share counts as a throughput sample from this many bytes on
PROBES_AT_ONCE = 32       # hellos open at once, for verified neighbours and again for the others
CHECKS_AT_ONCE = 4        # impostor checks (a thread each, up to 1.5 s) at once
# how `hearth run` spells each port's flag, and what 0 means there
PORT_FLAGS = {"transport_port": ("--port", "0 picks a free port"),
              "gateway_port": ("--gateway-port", "0 turns the gateway off"),
              "metrics_port": ("--metrics-port", "0 turns metrics off")}


class CannotListen(EdgeError):
    """A port the agent is set to listen on is taken by another program (or needs privileges)."""


class Agent:
    def __init__(self, config: Config, identity: Identity, store: Store):
        self.config = config
        self.identity = identity
        self.store = AsyncStore(store)   # Trio code awaits the store: its SQLite and statvfs run in threads
        self.started = time.time()
        self.server = None
        self.endpoint = None
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
        self.fetched = {"blocks": 0, "bytes": 0, "failures": 0}
        self.gateway = None
        self.gateway_port = None
        self.gateway_url = None                # the player's address, once the gateway serves
        self.webrtc = None
        self.nursery = None                    # the agent's, for fetches that run on their own
        self._background: dict = {}            # root -> Background fetch running

    # what the control socket and metrics show -----------------------------------------------------------

    async def status(self) -> dict:
        stat = await self.store.stat()
        return {"node": self.identity.node_id, "version": edge.__version__, "uptime": round(time.time() - self.started, 1),
                "endpoint": self.endpoint, "admission": self.config.admission, "peers": len(self.peers.peers),
                "store": stat, "served": dict(self.server.metrics) if self.server else {}, "fetched": self.fetched,
                "gateway_port": self.gateway_port, "gateway_url": self.gateway_url,
                "certificate": self.renewal.status() if getattr(self, "renewal", None) else None}

    def peer_list(self) -> list[dict]:
        return [p.as_dict() for p in sorted(self.peers.peers.values(), key=lambda p: -p.score)]

    async def samples(self) -> dict:
        m = self.server.metrics if self.server else {}
        stat = await self.store.stat()
        hot = stat["hot"] or {"hits": 0, "bytes": 0}   # the cache is off with block_cache = 0
        return {
            "blocks_served_total": ("counter", "blocks sent to neighbours", m.get("blocks_served", 0)),
            "bytes_served_total": ("counter", "block bytes sent to neighbours", m.get("bytes_served", 0)),
            "requests_total": ("counter", "requests from neighbours", m.get("requests", 0)),
            "refusals_total": ("counter", "requests refused by admission or policy", m.get("refusals", 0)),
            "busy_total": ("counter", "requests told to retry later (a peer over its rate, the upload limit's "
                                      "held-back share full, a probe the limit cannot pay, shutting down)",
                           m.get("busy", 0)),
            "bad_requests_total": ("counter", "malformed requests", m.get("bad_requests", 0)),
            "errors_total": ("counter", "requests this node failed to answer (its own errors: a failing disk, a bug)",
                             m.get("errors", 0)),
            "dropped_total": ("counter", "replies dropped for a peer that does not read them", m.get("dropped", 0)),
            "probe_bytes_total": ("counter", "filler bytes sent to neighbours' throughput probes",
                                  m.get("probe_bytes", 0)),
            "fetch_failures_total": ("counter", "blocks a neighbour failed to give", self.fetched["failures"]),
            "blocks_fetched_total": ("counter", "blocks fetched from neighbours", self.fetched["blocks"]),
            "peers": ("gauge", "neighbours known", len(self.peers.peers)),
            "gateway_requests_total": ("counter", "HTTP gateway requests",
                                       self.gateway.requests if self.gateway else 0),
            "gateway_bytes_total": ("counter", "content bytes sent by the HTTP gateway",
                                    self.gateway.served_bytes if self.gateway else 0),
            "webrtc_sessions": ("gauge", "browsers connected over WebRTC",
                                len(self.webrtc.sessions) if self.webrtc else 0),
            "webrtc_bytes_total": ("counter", "block bytes sent over WebRTC data channels",
                                   self.webrtc.served_bytes if self.webrtc else 0),
            "block_cache_hits_total": ("counter", "blocks served from memory (read and checked before)", hot["hits"]),
            "block_cache_bytes": ("gauge", "bytes of blocks kept in memory", hot["bytes"]),
            "store_blocks": ("gauge", "blocks in the store", stat["blocks"]),
            "store_bytes": ("gauge", "bytes in the store", stat["bytes"]),
        }

    # probes ----------------------------------------------------------------------------------------------------

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

    async def serve_probes(self, interval: float = 5.0) -> None:
        """Probe every neighbour each interval (the RTT, the uptime record, liveness) and forget the silent.

        Neighbours verified on their own key are probed in a lane of their own, and a neighbour still being
        probed is not started again: a flood of announced nodes that never answer (each costs a timeout) cannot
        delay the real neighbours' probes until they expire. Each lane has PROBES_AT_ONCE sockets at most."""
        lanes = {True: trio.CapacityLimiter(PROBES_AT_ONCE), False: trio.CapacityLimiter(PROBES_AT_ONCE)}
        probing: set[str] = set()

        async def probe(peer):
            try:
                async with lanes[peer.verified]:
                    await self.probe(peer)
            finally:
                probing.discard(peer.node)
        async with trio.open_nursery() as nursery:
            while True:
                for peer in list(self.peers.peers.values()):
                    if peer.node not in probing:
                        probing.add(peer.node)
                        nursery.start_soon(probe, peer)
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
            self.nursery.start_soon(run)
        return job

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
    """run_agent's services in one nursery, started in order (the data directory already checked and locked)."""
    identity = Identity.load(os.path.join(config.data_dir, KEY_FILE))
    listen = netif.resolve(config.listen)   # before anything is opened: a bad value is one line
    # opened and closed in a thread: the catalog's open (and its schema) and the writer's last batch are SQLite
    store = await trio.to_thread.run_sync(functools.partial(
        Store, config.data_dir, hot_bytes=config.block_cache, **store_settings(config)))   # the one quota
    agent = Agent(config, identity, store)
    policy = Policy(admission=config.admission,
                    fleet_key=public_key_of(config.fleet_key) if config.fleet_key else None,
                    write_allow=frozenset(config.write_allow), rate=config.peer_requests_per_second,
                    burst=2 * config.peer_requests_per_second, max_payload=config.max_frame,
                    upload=ByteRate(config.upload_limit), cert=agent.cert)

    try:
        async with trio.open_nursery() as nursery:
            agent.nursery = nursery
            await nursery.start(serve_renewal, agent)   # the revocation list is honoured before anyone is admitted
            with _listening("transport_port", config.transport_port):
                agent.server, agent.endpoint = await nursery.start(functools.partial(
                    serve_transport, store, identity, policy, f"tcp://{listen.binds[0]}:{config.transport_port}",
                    more_hosts=listen.binds[1:]))

            async def status(request):
                return await agent.status()

            async def peers(request):
                return agent.peer_list()

            async def fetch(request):
                return {"fetched": await agent.fetch(parse_cid(str(request.get("cid", ""))))}
            await nursery.start(serve_control, os.path.join(config.data_dir, "control.sock"),
                                {"status": status, "peers": peers, "fetch": fetch})
            if config.metrics_port:
                with _listening("metrics_port", config.metrics_port):
                    port = await nursery.start(serve_metrics, config.metrics_port, agent.samples)
                log.info("metrics at http://127.0.0.1:%d/metrics", port)
            bridge = None
            if config.mdns or config.gateway_port:
                bridge = await nursery.start(_serve_bridge)
            if config.gateway_port:
                from edge.transport.webrtc import WebRTCService
                agent.webrtc = WebRTCService(store.get, config.ice_servers,
                                             addresses=None if listen.every else listen.lan)
                agent.gateway = Gateway(store, fetch=agent.fetch_dag, fetch_later=agent.fetch_later,
                                        webrtc=(bridge, agent.webrtc), draining=lambda: agent.server.draining,
                                        budget=FetchBudget(config.gateway_fetch_client, config.gateway_fetch_total))
                with _listening("gateway_port", config.gateway_port):
                    port = await nursery.start(lambda task_status: serve_http(
                        agent.gateway, config.gateway_port, host=listen.binds, upload=policy.upload,
                        task_status=task_status))
                agent.gateway_port = port
                agent.gateway_url = _gateway_url(listen, port)
                log.info("gateway (player, streams, /ipfs/) at %s", agent.gateway_url)
            if config.mdns and not listen.every and not listen.lan:
                log.info("mDNS is off: listen = %r names no address neighbours can reach", config.listen)
            elif config.mdns:
                from edge.discovery.mdns import serve_discovery
                await nursery.start(lambda task_status: serve_discovery(
                    bridge, agent.peers, identity.node_id, int(agent.endpoint.rsplit(":", 1)[1]), CAPS,
                    probe=agent.probe, lan=None if listen.every else listen.lan, task_status=task_status))
            nursery.start_soon(agent.serve_probes)
            nursery.start_soon(_watchdog, agent.server)
            systemd.notify("READY=1\nSTATUS=serving")
            log.info("node %s ready: blocks at %s, data in %s", identity.node_id, agent.endpoint, config.data_dir)
            if agent.gateway_url:   # the last line `hearth run` shows: where to point a browser
                log.info("player at %s", agent.gateway_url)
            task_status.started(agent)
            await _until_signal(config.shutdown_grace, nursery.cancel_scope, agent.server)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)


async def _serve_bridge(*, task_status=trio.TASK_STATUS_IGNORED):
    from edge.bridge import open_bridge
    async with open_bridge() as bridge:
        task_status.started(bridge)
        await trio.sleep_forever()


async def _watchdog(server, stuck_limit: float = STUCK_LIMIT):
    """Ping systemd's watchdog while the node can serve: not while the transport's serving thread is stuck on
    one turn (a read that never returns), so systemd restarts a node that only looks alive."""
    interval = systemd.watchdog_interval()
    if interval is None:
        return
    warned = False
    while True:
        stuck = server.stuck_for()
        if stuck < stuck_limit:
            systemd.notify("WATCHDOG=1")
            warned = False
        elif not warned:
            log.error("the transport has been stuck for %.0f s (a disk that does not answer?); no longer telling "
                      "the watchdog all is well", stuck)
            warned = True
        await trio.sleep(interval)


async def _until_signal(grace: float, scope: trio.CancelScope, server):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: stopping (at most %.1f s)", signal.Signals(signum).name, grace)
            systemd.notify("STOPPING=1")
            scope.deadline = trio.current_time() + grace   # a hard stop at the deadline whatever happens
            await server.drain()   # no new requests; the ones running finish
            scope.cancel()
            return
