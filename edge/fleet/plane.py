"""The fleet plane: an agent service that meets the fleet's other nodes through an MQTT 5 broker.

It publishes this node's presence (retained, with message expiry, cleared by the last will) and its telemetry,
subscribes to the presence of its region, and puts the nodes whose records check out into the peer table as WAN
neighbours (agent.peers.fleet_seen; the table ranks LAN neighbours first and keeps at most its WAN cap).
Formats and topics: edge/fleet/records.py and docs/fleet.md.

The broker is trusted for nothing but delivery. A record must be signed by the node its topic names, fresh,
newer than the last one seen from that node, and in a fleet certified by the fleet key; anything else is
dropped and counted. An empty retained message (a will, or anyone's) is an unsigned hint, as an mDNS goodbye
is: it only drops the routes the fleet gave that no handshake has verified. A broker that refuses, drops,
floods or sends garbage ends that connection; the plane reconnects with backoff and never stops the agent.
"""

import collections
import logging
import os
import random
import re
import time

import trio

import edge
from edge import netif
from edge.fleet.mqtt import Broker, BrokerError, connect, parse_broker
from edge.fleet.portmap import reach
from edge.fleet.records import (PRESENCE_EXPIRY, Presence, RecordError, Status, check, fleet_name, next_seq,
                                parse_record, presence_topic, serialize_record, status_topic, topic_node)
from edge.logsafe import printable
from edge.service import Handle

log = logging.getLogger(__name__)
PRESENCE_EVERY = 300.0     # seconds between presence records when nothing changes (well within their expiry)
STATUS_EVERY = 60.0        # seconds between status records when nothing changes
STATUS_EXPIRY = 7 * 86400  # a silent node's last status stays a week: `fleet status` lists it as gone quiet
TICK = 5.0                 # how often a change is looked for
BACKOFF = (1.0, 60.0)      # seconds before reconnecting: doubles from the first to the second
MAX_KNOWN = 4096           # nodes whose last sequence number is remembered (the oldest forgotten first)
MAX_RECORDS = 256          # presence records held (the peer table takes at most its WAN cap of them)
RATE = 200.0               # messages handled a second (a burst of 4 x this); past it they are dropped
STUCK = 20.0               # seconds the transport may be stuck on one turn before the node says it is failing


def own_slot(path: str = "/proc/cmdline") -> str:
    """The A/B slot this system booted (hearth.slot= on the kernel command line), "" off a Hearth image.
    (provisioning/slots.py's current_slot reads the same, raising off a Hearth image; provisioning sits above the
    fleet in the import order.)"""
    try:
        with open(path) as f:
            found = re.search(r"\bhearth\.slot=([ab])\b", f.read())
    except OSError:
        return ""
    return found.group(1) if found else ""


class Plane:
    def __init__(self, agent, caps: tuple[str, ...] = (), broker: Broker | None = None):
        config = agent.config
        self.caps = tuple(caps)[:16]   # what the transport serves (edge/transport/server.py's CAPS)
        self.agent = agent
        self.config = config
        self.broker = broker or parse_broker(config.fleet_broker)
        self.fleet = fleet_name(config.fleet_key)
        self.region = config.fleet_region
        self.ca_file = os.path.join(config.data_dir, config.fleet_broker_ca) if config.fleet_broker_ca else None
        self.identity = agent.identity
        self.topic = presence_topic(self.fleet, self.region, self.identity.node_id)
        self.seqs: collections.OrderedDict[str, int] = collections.OrderedDict()   # node -> last seq taken
        self.records: dict[str, Presence] = {}
        self.counts = collections.Counter()   # what came from the broker, by what was done with it
        self.connected = False
        self.connects = 0
        self.last_error = ""
        self._seq = 0
        self._tokens, self._filled = 4 * RATE, time.monotonic()
        self._errors_seen = 0
        self.reach = ""   # how neighbours in other homes reach this node (edge/fleet/portmap.py's reach)

    # what this node says ------------------------------------------------------------------------------------

    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Where neighbours can reach this node's transport: fleet_addresses if set (a mapped or public
        address), else the addresses it listens on that neighbours may be told (loopback only when it listens
        on nothing else: tests on one host)."""
        port = int(self.agent.services.get("transport").endpoint.rsplit(":", 1)[1])
        out = []
        for spec in self.config.fleet_addresses:
            host, sep, p = spec.rpartition(":") if spec.count(":") == 1 or spec.startswith("[") else ("", "", "")
            host, p = (host.strip("[]"), int(p)) if sep else (spec.strip("[]"), port)
            out.append((host, p))
        mapped = self.agent.services.get("portmap")   # port_mapping = auto: the router's external address
        if not out and mapped is not None and mapped.external is not None:
            out = [mapped.external]
        if not out:
            listen = netif.resolve(self.config.listen)
            hosts = listen.lan or tuple(b for b in listen.binds if b not in (netif.ALL, "::"))
            out = [(h, port) for h in hosts]
        return tuple(out[:8])

    def presence(self, now: float, stat: dict, addresses: tuple) -> Presence:
        """The presence record, from the store's figures (stat: what the store's stat() says) and this node's
        reachable addresses (what addresses() says)."""
        room = stat["disk_free"] - (stat["reserve"] or 0)
        if stat["quota"]:
            room = min(room, stat["quota"] - stat["bytes"])
        self._seq = next_seq(self._seq, now)
        return Presence(self.identity.node_id, self._seq, int(now), self.region, addresses,
                        self.caps, max(0, room), 1, edge.__version__[:32], self.agent.cert or b"")

    def _errors(self) -> int:
        transport = self.agent.services.get("transport")
        served = transport.stats() if transport else {}
        return served.get("errors", 0) + self.agent.fetched["failures"]

    def health(self) -> str:
        """failing while the transport is stuck on one turn; degraded when errors grew since the last record."""
        transport = self.agent.services.get("transport")
        stuck = transport.stuck_for() if transport else 0.0
        return "failing" if stuck >= STUCK else "degraded" if self._errors() > self._errors_seen else "ok"

    def status(self, now: float, info: dict) -> Status:
        """The status record, from what the agent's status says (info)."""
        served = info["served"]
        gateway = self.agent.gateway_counters["bytes"]
        health, errors = self.health(), self._errors()
        self._errors_seen = errors
        self._seq = next_seq(self._seq, now)
        return Status(self.identity.node_id, self._seq, int(now), edge.__version__[:32], own_slot(),
                      int(info["uptime"]), info["store"]["bytes"], info["store"]["quota"] or 0,
                      served.get("bytes_served", 0) + gateway, info["peers"], errors, health, self.agent.cert or b"")

    # what others say ----------------------------------------------------------------------------------------

    def _admit(self) -> bool:
        """A token per message handled (RATE a second, bursts of 4 x RATE): a flood costs what it is allowed."""
        now = time.monotonic()
        self._tokens = min(4 * RATE, self._tokens + (now - self._filled) * RATE)
        self._filled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> str:
        """Take one message from the broker; returns (and counts) what was done with it."""
        what = self._handle(topic, payload, now)
        self.counts[what] += 1
        return what

    def _handle(self, topic, payload, now) -> str:
        if not self._admit():
            return "dropped: flood"
        node = topic_node(topic)
        if not topic.startswith(f"hearth/{self.fleet}/presence/{self.region}/"):
            return "dropped: topic"
        if not payload:
            if self.records.pop(node, None) is not None:
                self.agent.peers.fleet_gone(node)
                return "cleared"
            return "ignored: clear"
        try:
            record = parse_record(payload)
            check(record, topic, self.config.fleet_key, now)
        except RecordError as exc:
            log.debug("fleet: dropped a message on %s: %s", printable(topic[:200]), exc)
            return "dropped: " + exc.reason
        if not isinstance(record, Presence) or record.region != self.region:
            return "dropped: malformed"
        if record.node == self.identity.node_id:
            return "ignored: own"
        last = self.seqs.get(node)
        if last is not None and record.seq <= last:
            return "dropped: replayed"
        self.seqs[node] = record.seq
        self.seqs.move_to_end(node)
        while len(self.seqs) > MAX_KNOWN:
            self.seqs.popitem(last=False)
        if node not in self.records and len(self.records) >= MAX_RECORDS:
            # the oldest record held in reserve goes, not one of a listed neighbour: a neighbour whose record
            # went would expire unrefreshed and a fresh one take its place at once, unprobed (with 1,000 nodes
            # in the region republishing, about one a second: each a probe, a timeout and a handshake check,
            # most of an idle agent's CPU, benchmarks/fleet_scale.py); the table turns over at its own pace
            spare = [r for r in self.records.values() if self.agent.peers.get(r.node) is None]
            oldest = min(spare or self.records.values(), key=lambda r: r.time)
            del self.records[oldest.node]
        self.records[node] = record
        return "accepted" if self._seat(record) else "dropped: table full"

    def _seat(self, record: Presence) -> bool:
        return self.agent.peers.fleet_seen(record.node, record.addrs, record.proto, record.caps,
                                           record.free) is not None

    def as_dict(self) -> dict:
        return {"broker": str(self.broker), "region": self.region, "connected": self.connected,
                "connects": self.connects, "last_error": self.last_error, "nodes": len(self.records),
                "messages": dict(self.counts), "reach": self.reach}

    # the service --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                async with connect(self.broker, self.identity.node_id, will=(self.topic, b""),
                                   ca_file=self.ca_file) as session:
                    self.connected, delay = True, BACKOFF[0]
                    self.connects += 1
                    log.info("fleet: connected to %s (region %s)", self.broker, self.region)
                    session.subscribe(f"hearth/{self.fleet}/presence/{self.region}/+")
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._publish, session)
                        async for topic, payload, _ in session.messages:
                            self.handle(topic, payload)
            except BrokerError as exc:
                self.last_error = str(exc)
                log.warning("fleet: %s; trying again within %.0f s", exc, delay)
            except Exception as exc:   # noqa: BLE001 - a bug ends this connection, never the agent
                self.last_error = printable(repr(exc))[:200]
                log.warning("fleet: the connection to %s failed: %s", self.broker, self.last_error)
            finally:
                self.connected = False
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(BACKOFF[1], delay * 2)

    async def _publish(self, session) -> None:
        """Presence and status at once, again each PRESENCE_EVERY / STATUS_EVERY, and on change; the WAN
        neighbours re-announced to the peer table each tick, as mDNS re-announces LAN ones."""
        said, next_presence, next_status, last_status = None, 0.0, 0.0, None
        slot = own_slot()
        while True:
            # what decides whether to publish is cheap; the records need the store's totals (a count over its
            # blocks table, read by the store's async face in a worker thread), so they are made only when due
            now = time.time()
            # the addresses come from the host's interfaces and routes: read in a worker thread
            addresses = await trio.to_thread.run_sync(self.addresses)
            mapped = self.agent.services.get("portmap")
            self.reach = reach(addresses, mapped.mapping if mapped else None, bool(self.config.fleet_addresses),
                               "tunnel" in self.agent.services)
            changed = (addresses, self.caps, self.agent.cert)
            if changed != said or now >= next_presence:
                record = self.presence(now, await self.agent.store.stat(), addresses)
                session.publish(self.topic, serialize_record(record, self.identity), retain=True,
                                expires=PRESENCE_EXPIRY)
                said, next_presence = changed, now + PRESENCE_EVERY
            key = (slot, self.health(), len(self.agent.peers.peers))
            if key != last_status or now >= next_status:
                status = self.status(now, await self.agent.status())
                session.publish(status_topic(self.fleet, self.identity.node_id),
                                serialize_record(status, self.identity), retain=True, expires=STATUS_EXPIRY)
                last_status, next_status = key, now + STATUS_EVERY
            for known in list(self.records.values()):
                if known.time >= now - PRESENCE_EXPIRY:
                    # the ones listed are refreshed, the others fill free places only: held records beyond the
                    # table's cap do not take turns evicting each other before their probes can finish
                    if self.agent.peers.get(known.node) is not None or self.agent.peers.wan_room():
                        self._seat(known)
                else:   # its broker record has expired too
                    del self.records[known.node]
                    self.agent.peers.fleet_gone(known.node)
            await trio.sleep(TICK)


async def serve_plane(agent, caps: tuple[str, ...] = (), *, task_status=trio.TASK_STATUS_IGNORED):
    """The agent's fleet plane (started when fleet_broker is set): reports the Plane, then runs until
    cancelled, whatever the broker does; its handle's stats are the plane's (`hearth status`). caps: the
    capabilities the node's transport serves."""
    plane = Plane(agent, caps)
    task_status.started(Handle("fleet", plane.as_dict))
    await plane.run()


def client_id(prefix: str = "hearth-cli") -> str:
    """A client id for a command that only reads (never a node id: it must not take a node's session over)."""
    return f"{prefix}-{os.getpid()}-{random.getrandbits(32):08x}"
