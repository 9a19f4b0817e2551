"""The fleet plane at scale: many simulated nodes on one mosquitto, and a real agent among 1,000 WAN nodes.

  fleet_scale.py [--nodes 10000] [--region-size 100] [--samples 20] [--agent-nodes 1000] [--idle 30]

Each simulated node is a light MQTT 5 client in this one process (raw packets over its own non-blocking socket,
one epoll loop): it connects as a real node does (clean start, keep-alive 30 s, a retained empty last will on
its presence topic), subscribes to its region's presence and publishes its own presence record: a real one,
signed by its own node key with edge/fleet/records.py (signed before the run, so the client stays light),
retained with the plane's message expiry. Simulated nodes drain what the broker sends them without parsing it
and take it at QoS 0 (a real node subscribes at QoS 1 and acknowledges each message; here that would be this
process's work, not the broker's).

Measured:
  1. the broker's CPU time and resident memory (from /proc of the mosquitto process) as the nodes join, per
     1,000 nodes, and at steady state (keep-alives, and each node republishing every 300 s as the plane does);
  2. the time for a new node's presence to reach the subscribers of its region (p50/p99 over every
     subscriber of every sample; "all" is when the last one of a sample's region had it), from the new node's
     TCP connect;
  3. a real agent (`hearth run`, fleet_broker set) in a region where --agent-nodes simulated nodes announce
     themselves: its RSS and idle CPU before and after (goal: RSS <= 80 MiB, idle CPU <= 2% of a core).

If this machine cannot hold --nodes connections (file descriptors, ephemeral ports, memory), it runs the most
it can, says why, and extrapolates the per-1,000 figures. Results and the extrapolation to clustered brokers
are in docs/fleet.md ("Scale").
"""

import argparse
import dataclasses
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import print_table  # noqa: E402
from edge.fleet.records import PRESENCE_EXPIRY, Presence, presence_topic, serialize_record  # noqa: E402
from edge.identity import Identity  # noqa: E402

KEEPALIVE = 30            # seconds, as edge/fleet/mqtt.py's KEEPALIVE
REPUBLISH = 300.0         # seconds between a node's presence records, as edge/fleet/plane.py's PRESENCE_EVERY
FLEET = "open"
CLK = os.sysconf("SC_CLK_TCK")


# MQTT 5 packets (OASIS MQTT 5.0, section 3): only what a node sends -------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, will_topic: str) -> bytes:
    # clean start, will flag, will QoS 1, will retain; keep-alive; no properties; payload: id, will props, topic,
    # the empty will message
    flags = 0x02 | 0x04 | (1 << 3) | 0x20
    body = _str("MQTT") + bytes([5, flags]) + struct.pack("!H", KEEPALIVE) + _varint(0)
    body += _str(client_id) + _varint(0) + _str(will_topic) + _str(b"")
    return _packet(0x10, body)


def subscribe_packet(pid: int, topic: str, qos: int) -> bytes:
    return _packet(0x82, struct.pack("!H", pid) + _varint(0) + _str(topic) + bytes([qos]))


def publish_packet(pid: int, topic: str, payload: bytes, expiry: int) -> bytes:
    props = b"\x02" + struct.pack("!I", expiry)            # Message Expiry Interval
    return _packet(0x30 | 0x02 | 0x01, _str(topic) + struct.pack("!H", pid) + _varint(len(props)) + props + payload)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


# /proc figures --------------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK          # utime + stime


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (the agent's Trio thread, zmq's I/O threads, Trio's workers)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK
    return out


WINDOWS: list[tuple[float, float]] = []    # (CPU seconds, wall seconds) of each idle_cpu window, for the report


def idle_cpu(pid: int, seconds: float, pump) -> float:
    """Share of one core pid used over `seconds` while pump(deadline) keeps the simulated nodes alive."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    pump(t0 + seconds)
    used, wall = cpu_seconds(pid) - c0, time.monotonic() - t0
    WINDOWS.append((used, wall))
    return used / wall


# the simulated nodes ---------------------------------------------------------------------------------------------

class Node:
    __slots__ = ("sock", "region", "record", "topic", "out", "pid", "next_ping", "next_presence", "watch", "tail",
                 "identity", "presence")

    def __init__(self, identity: Identity, region: str, addr: str, now: float, port: int = 4801):
        self.region, self.identity = region, identity
        self.topic = presence_topic(FLEET, region, identity.node_id)
        self.presence = Presence(identity.node_id, int(now * 1000), int(now), region, ((addr, port),), ("blocks",),
                                 1 << 30, 1, "bench")
        self.record = serialize_record(self.presence, identity)     # a real, signed record, made before the run
        self.sock, self.out, self.pid, self.watch, self.tail = None, b"", 1, None, b""
        self.next_ping = self.next_presence = 0.0

    def again(self) -> bytes:
        """The next presence record (a higher sequence number, the time now), as the plane republishes it."""
        now = time.time()
        self.presence = dataclasses.replace(self.presence, seq=max(self.presence.seq + 1, int(now * 1000)),
                                            time=int(now))
        self.record = serialize_record(self.presence, self.identity)
        return self.record


class Swarm:
    """Simulated nodes in one epoll loop."""

    def __init__(self, port: int):
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.nodes: list[Node] = []
        self.by_region: dict[str, list[Node]] = {}
        self.received = 0
        self.arrivals: list[float] = []     # for the sample in flight: when each region member saw it
        self.refused = 0
        self.pings = 0

    def join(self, node: Node, qos: int | None = 0) -> None:
        """Connect node, subscribe it to its region at qos (None: it only announces itself), publish."""
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect_ex(("127.0.0.1", self.port))
        node.sock = s
        # MQTT lets a client send on without waiting for CONNACK: connect, subscribe, publish in one write
        node.out = (connect_packet(node.topic.rsplit("/", 1)[1], node.topic)
                    + (subscribe_packet(1, f"hearth/{FLEET}/presence/{node.region}/+", qos) if qos is not None
                       else b"")
                    + publish_packet(2, node.topic, node.record, PRESENCE_EXPIRY))
        now = time.monotonic()
        node.next_ping = now + KEEPALIVE * random.uniform(0.5, 0.9)
        node.next_presence = now + random.uniform(0, REPUBLISH)
        self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, node)
        self.nodes.append(node)
        self.by_region.setdefault(node.region, []).append(node)

    def send(self, node: Node, data: bytes) -> None:
        node.out += data
        self._flush(node)

    def _flush(self, node: Node) -> None:
        try:
            sent = node.sock.send(node.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost(node)
            return
        node.out = node.out[sent:]
        self.sel.modify(node.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if node.out else 0), node)

    def _lost(self, node: Node) -> None:
        self.refused += 1
        try:
            self.sel.unregister(node.sock)
        except (KeyError, ValueError):
            pass
        node.sock.close()
        self.nodes.remove(node)
        self.by_region[node.region].remove(node)

    def pump(self, until: float, done=lambda: False, republish: bool = True) -> None:
        """Serve the sockets until `until` (monotonic) or done(): drain what arrives, write what waits, ping and
        (unless told not to) republish when due."""
        next_chores = 0.0
        while time.monotonic() < until and not done():
            for key, events in self.sel.select(0.05):
                node = key.data
                if events & selectors.EVENT_WRITE and node.out:
                    self._flush(node)
                if events & selectors.EVENT_READ:
                    try:
                        data = node.sock.recv(1 << 16)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._lost(node)
                        continue
                    self.received += len(data)
                    if node.watch is not None and node.watch in node.tail + data:
                        self.arrivals.append(time.monotonic())
                        node.watch = None
                    node.tail = data[-80:] if node.watch is not None else b""
            now = time.monotonic()
            if now >= next_chores:
                next_chores = now + 0.5
                for node in self.nodes:
                    if republish and now >= node.next_presence:
                        node.pid = node.pid % 60000 + 1
                        node.next_presence = now + REPUBLISH
                        node.next_ping = now + KEEPALIVE * 0.8
                        self.send(node, publish_packet(node.pid, node.topic, node.again(), PRESENCE_EXPIRY))
                    elif now >= node.next_ping:
                        node.next_ping = now + KEEPALIVE * 0.8
                        self.pings += 1
                        self.send(node, PINGREQ)

    def settle(self, quiet: float = 1.0, limit: float = 120.0) -> None:
        """Pump until for `quiet` seconds nothing has arrived but the answers to keep-alives (the broker has
        delivered the retained records); nobody republishes meanwhile."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before, pings = self.received, self.pings
            self.pump(time.monotonic() + quiet, republish=False)
            if self.received - before <= 2 * (self.pings - pings) + 64 and not any(n.out for n in self.nodes):
                return

    def close(self) -> None:
        for node in list(self.nodes):
            try:
                node.sock.send(DISCONNECT)
            except OSError:
                pass
            node.sock.close()
        self.sel.close()


# the broker and the agent ---------------------------------------------------------------------------------------

def _die_with_us() -> None:
    """In the broker's and the agent's process before exec: end when this one ends, even killed (PR_SET_PDEATHSIG)."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(workdir: str, port: int) -> subprocess.Popen:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        sys.exit("mosquitto is not installed (make setup installs Debian's)")
    conf = os.path.join(workdir, "mosquitto.conf")
    import getpass
    with open(conf, "w") as f:
        # max_connections -1: no limit but the descriptors (raised for it below); max_queued_messages: what a
        # subscriber that reads slowly (this process, busy) may have waiting before the broker drops
        f.write(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nmax_connections -1\n"
                "allow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n"
                "max_queued_messages 100000\nset_tcp_nodelay true\n")
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_die_with_us)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    sys.exit("mosquitto did not start")


def capacity(wanted: int) -> tuple[int, str]:
    """How many simulated nodes this machine can hold, and why fewer than wanted if so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want_fds = wanted + 1100
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, want_fds), max(hard, want_fds)))   # root may raise
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1100     # room for the agent's nodes, files, pipes
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
    ports = high - low - 1000
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    memory = int(free * 0.5 / 40_000)          # ~40 kB a connection on both sides together, with room to spare
    limits = {"file descriptors": fds, "ephemeral ports": ports, "free memory": memory}
    fits = min(wanted, *limits.values())
    why = "" if fits == wanted else f"only {fits} fit: {min(limits, key=limits.get)} allow {min(limits.values())}"
    return fits, why


def start_agent(workdir: str, broker: str, region: str, profile: str = "") -> subprocess.Popen:
    data = os.path.join(workdir, "agent")
    env = {**os.environ, "HEARTH_MDNS": "0", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": "0",
           "HEARTH_METRICS_PORT": "0", "HEARTH_GATEWAY_PORT": "0", "HEARTH_FLEET_BROKER": broker,
           "HEARTH_FLEET_REGION": region}
    subprocess.run([sys.executable, "-m", "edge", "--data-dir", data, "init"], env=env, check=True,
                   capture_output=True)
    log = open(os.path.join(workdir, "agent.log"), "w")
    wrap = ["-m", "cProfile", "-o", profile] if profile else []
    return subprocess.Popen([sys.executable, *wrap, "-m", "edge", "--data-dir", data, "run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_us)


def agent_status(workdir: str) -> dict:
    from edge.control import ask
    try:
        return ask(os.path.join(workdir, "agent", "control.sock"), "status", timeout=5)
    except (OSError, ValueError):
        return {}


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))    # the broker and the agent are stopped too
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--region-size", type=int, default=100, help="simulated nodes per region")
    ap.add_argument("--samples", type=int, default=20, help="new nodes whose presence is timed")
    ap.add_argument("--agent-nodes", type=int, default=1000, help="WAN nodes announced in the agent's region")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds each idle figure is measured over")
    ap.add_argument("--batch", type=int, default=250, help="nodes joining at once")
    ap.add_argument("--settle", type=float, default=240.0, help="seconds before the agent's idle CPU is measured "
                    "again, once the probes of WAN nodes that never answer have backed off")
    ap.add_argument("--profile", default="", help="run the agent under cProfile, its statistics written here")
    args = ap.parse_args()

    nodes, why = capacity(args.nodes + args.samples + args.agent_nodes)
    nodes = max(0, nodes - args.samples - args.agent_nodes)
    if why:
        print(f"this machine holds {nodes} simulated nodes, not {args.nodes}: {why}; the figures per 1,000 "
              "nodes are extrapolated")
    workdir = tempfile.mkdtemp(prefix="hearth-fleet-scale-")
    port = free_port()
    broker = start_mosquitto(workdir, port)
    swarm = Swarm(port)
    agent = None
    try:
        regions = max(1, nodes // args.region_size)
        t0 = time.time()
        print(f"signing {nodes + args.samples + args.agent_nodes} presence records ...", flush=True)
        sign_start = time.perf_counter()
        population = [Node(Identity.generate(), f"r{i % regions}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                           t0) for i in range(nodes)]
        newcomers = [Node(Identity.generate(), f"r{random.randrange(regions)}", "10.255.0.1", t0)
                     for _ in range(args.samples)]
        # the agent's region: addresses that do not answer (port 9 on loopback addresses, closed here: probes
        # are refused at once), as nodes behind NATs without a mapping would not
        wan = [Node(Identity.generate(), "bench-agent", f"127.1.{i >> 8 & 255}.{i & 255 or 1}", t0, 9)
               for i in range(args.agent_nodes)]
        sample = (population or wan or newcomers)[0]
        print(f"  {time.perf_counter() - sign_start:.1f} s; record {len(sample.record)} bytes")

        if nodes:   # --nodes 0: the agent's figures alone
            # 1. the broker as nodes join --------------------------------------------------------------------
            rows, base_cpu, base_rss = [], cpu_seconds(broker.pid), rss_mib(broker.pid)
            rows.append([0, 0.0, base_rss, 0.0, "-"])
            last_cpu, last_t = base_cpu, time.monotonic()
            join_start = time.monotonic()
            for i in range(0, nodes, args.batch):
                for node in population[i:i + args.batch]:
                    swarm.join(node)
                swarm.pump(time.monotonic() + 0.2, lambda: not any(n.out for n in swarm.nodes[-args.batch:]))
                joined = min(nodes, i + args.batch)
                if joined % 1000 == 0 or joined == nodes:
                    swarm.settle(quiet=0.5)
                    cpu, now = cpu_seconds(broker.pid), time.monotonic()
                    rows.append([len(swarm.nodes), cpu - base_cpu, rss_mib(broker.pid), cpu - last_cpu,
                                 f"{now - last_t:.1f}"])
                    last_cpu, last_t = cpu, now
                    print(f"  {len(swarm.nodes)} nodes connected, broker RSS {rows[-1][2]:.1f} MiB", flush=True)
            join_time = time.monotonic() - join_start
            print_table(f"mosquitto as {nodes} nodes join (regions of {args.region_size}; each node gets its region's "
                        "retained records)", ["nodes", "broker CPU s", "broker RSS MiB", "CPU s this 1,000",
                                              "wall s this 1,000"], rows)
            connected = len(swarm.nodes)
            rss_per_1000 = (rows[-1][2] - base_rss) / max(1, connected) * 1000
            steady = idle_cpu(broker.pid, args.idle, swarm.pump)
            join_cpu = rows[-1][1] / max(1, connected) * 1000
            print(f"\nbroker: {rss_per_1000:.2f} MiB RSS per 1,000 nodes; joining cost {join_cpu:.2f} "
                  f"CPU s per 1,000 nodes ({join_time:.0f} s wall for {connected}); steady state (keep-alives every "
                  f"{KEEPALIVE} s, presence every {REPUBLISH:.0f} s) {steady * 100:.2f}% of a core = "
                  f"{steady * 100 / max(1, connected) * 1000:.3f}% per 1,000 nodes; {swarm.refused} connections lost")

            # 2. a new node's presence reaching its region ------------------------------------------------------
            each, last = [], []
            for node in newcomers:
                members = list(swarm.by_region.get(node.region, []))
                needle = node.topic.rsplit("/", 1)[1].encode()
                for m in members:
                    m.watch, m.tail = needle, b""
                swarm.arrivals = []
                start = time.monotonic()
                swarm.join(node, qos=0)
                swarm.pump(start + 10, lambda: len(swarm.arrivals) >= len(members))
                each += [t - start for t in swarm.arrivals]
                if len(swarm.arrivals) == len(members) and members:
                    last.append(max(swarm.arrivals) - start)
                for m in members:
                    m.watch = None
                swarm.settle(quiet=0.2, limit=5)
            print(f"\na new node's presence reaching the {args.region_size - 1}-odd nodes of its region "
                  f"({len(newcomers)} new nodes, {len(each)} deliveries, from its TCP connect): p50 "
                  f"{percentile(each, 50) * 1000:.1f} ms, p99 {percentile(each, 99) * 1000:.1f} ms; the whole region "
                  f"p50 {percentile(last, 50) * 1000:.1f} ms, p99 {percentile(last, 99) * 1000:.1f} ms")

        # 3. a real agent among --agent-nodes WAN nodes -------------------------------------------------------
        if args.agent_nodes:
            agent = start_agent(workdir, f"mqtt://127.0.0.1:{port}", "bench-agent", args.profile)
            print(f"\nthe agent runs as pid {agent.pid} (py-spy can attach to it)", flush=True)
            deadline = time.monotonic() + 60
            while not agent_status(workdir).get("services", {}).get("fleet", {}).get("connected"):
                if time.monotonic() > deadline or agent.poll() is not None:
                    sys.exit(f"the agent did not connect to the broker; see {workdir}/agent.log")
                swarm.pump(time.monotonic() + 0.5)
            swarm.pump(time.monotonic() + min(10, args.idle))   # its start is over: the store opened, records sent
            cpu0, rss0 = idle_cpu(agent.pid, args.idle, swarm.pump), rss_mib(agent.pid)
            for node in wan:    # they announce themselves; the agent is the subscriber measured
                swarm.join(node, qos=None)
            swarm.settle(quiet=1.0)
            swarm.pump(time.monotonic() + min(15, args.idle))   # the agent takes them, probes its WAN neighbours
            fleet = agent_status(workdir).get("services", {}).get("fleet", {})
            peers = agent_status(workdir).get("peers")
            threads = thread_cpu(agent.pid)
            cpu1, rss1 = idle_cpu(agent.pid, args.idle * 2, swarm.pump), rss_mib(agent.pid)
            after = thread_cpu(agent.pid)
            busiest = sorted(((after[k] - threads.get(k, 0.0), k) for k in after), reverse=True)[:4]
            rows = [["no WAN nodes", rss0, cpu0 * 100, *WINDOWS[-2]],
                    [f"{len(wan)} WAN nodes, first minute", rss1, cpu1 * 100, *WINDOWS[-1]]]
            if args.settle:
                swarm.pump(time.monotonic() + args.settle)
                threads = thread_cpu(agent.pid)
                cpu1, rss1 = idle_cpu(agent.pid, args.idle * 2, swarm.pump), rss_mib(agent.pid)
                after = thread_cpu(agent.pid)
                busiest = sorted(((after[k] - threads.get(k, 0.0), k) for k in after), reverse=True)[:4]
                rows.append([f"{len(wan)} WAN nodes, after {args.settle:.0f} s more", rss1, cpu1 * 100, *WINDOWS[-1]])
            print_table(f"the agent (a real `hearth run`, fleet_broker set) with {len(wan)} WAN nodes announced in "
                        "its region (none answers: the worst case)", ["", "RSS MiB", "idle CPU % of a core", "CPU s",
                                                                 "over wall s"], rows)
            print(f"  the plane: {fleet.get('nodes')} records held, messages {fleet.get('messages')}; "
                  f"peers {peers}; idle CPU by thread (last row): "
                  + ", ".join(f"{name} {cpu / (args.idle * 2) * 100:.2f}%" for cpu, name in busiest))
            print(f"  goal RSS <= 80 MiB: {'met' if rss1 <= 80 else 'MISSED'}; goal idle CPU <= 2% of a core: "
                  f"{'met' if cpu1 <= 0.02 else 'MISSED'}")
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        swarm.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
