"""Memory under attack (issue 20 acceptance): a real agent (`python -m edge run`, a fresh data directory made by
`hearth init`, loopback only) runs in a memory cgroup with its unit's MemoryMax and LimitNOFILE, while the attacks
of findings 3, 4, 5, 7, 8 and 10 run against it at once:

  f03  a neighbour (a static peer) that answers each probe's hello with a 64 MiB message;
  f04  a DAG bomb (3 blocks, 1,000 links a node, a million leaves if duplicates are followed) held by a rogue
       neighbour and asked for through the gateway, over and over;
  f05  `Range: bytes=0-0` requests for an attacker's big roots (held by that neighbour) from two LAN addresses,
       to make the node fetch and store them: the gateway's fetch budget stops it (429);
  f07  ~1,100 idle TCP connections to the transport port, reopened as the server closes them;
  f08  1,500 idle sockets to the gateway, reopened as the server closes them;
  f10  20,000 throwaway CURVE keys, each saying hello once.

Meanwhile a well-behaved neighbour (a real client with a key of its own, fetching a real block) and a viewer (HTTP
GET of a real file, from an address of its own) keep asking. Asserted: the agent is never OOM-killed (the
cgroup's oom_kill count stays 0 and the process is up), its peak RSS stays under the limit, it answers both of
them throughout, and the fetch budget refused the attacker (429). Printed, not asserted: the cgroup's peak,
peak RSS and descriptors, what each attack achieved and the viewer's and neighbour's latency percentiles.

The byte budgets are lowered (8 MiB a client, 16 MiB in all: one big root each) so that the budget is reached in
seconds even on a loaded machine; the memory limit and descriptor limit are the unit's. Skipped, with the reason,
where there is no cgroup v1 memory controller to make a child of, or not as root. Bounded: the attacks run for
ATTACK seconds, each in a bounded count; the whole test has a hard limit (TIME_LIMIT).
"""

import os
import random
import resource
import subprocess
import sys
import time

import pytest
import trio
import zmq
import zmq.utils.z85

from edge.identity import Identity, check_node_id
from edge.store import Store, content
from edge.store.importer import Chunker
from edge.transport.client import open_client
from edge.transport.server import Policy, serve_transport
from edge.wire import Hello, Welcome, serialize_message

from tests.agent.netns import Node
from tests.agent.test_shutdown import free_port
from tests.gateway.test_torture import exchange, request
from tests.security.neighbours import Rogue
from tests.security.test_network import bomb

CGROUP_ROOT = "/sys/fs/cgroup/memory"
UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "provisioning", "hearth.service")
ATTACK = 30.0              # seconds the attacks run together (each reaches its bound within seconds; the key
                           # flood gets past the server's 4,096 peer states even on a loaded machine)
TIME_LIMIT = 60.0          # seconds: a hard bound on the attack phase and the checks after it
TRANSPORT_IDLE = 1100      # idle TCP connections held to the transport port (finding 7)
GATEWAY_IDLE = 1500        # idle sockets held to the gateway (finding 8)
CURVE_KEYS = 20_000        # throwaway CURVE keys that say hello (finding 10)
BIG_ROOTS = 6              # the attacker's roots for Range: bytes=0-0 (finding 5) ...
BIG_ROOT = 8 << 20         # ... of this many bytes each
BUDGET_CLIENT = 8 << 20    # gateway_fetch_client for this agent
BUDGET_TOTAL = 16 << 20    # gateway_fetch_total for this agent
VIEWER_FILE = 3 << 20      # the file the viewer plays
HUGE = 64 << 20            # bytes of each message the rogue neighbour answers a hello with (finding 3)


def unit_setting(name: str) -> str:
    with open(UNIT) as f:
        for line in f:
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} is not set in {UNIT}")


def to_bytes(size: str) -> int:
    """systemd's size units (K, M, G: powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def why_no_cgroup() -> str | None:
    if os.geteuid() != 0:
        return "a memory cgroup needs root"
    if not os.path.exists(os.path.join(CGROUP_ROOT, "memory.limit_in_bytes")):
        return f"no cgroup v1 memory controller at {CGROUP_ROOT}"
    return None


why_not = why_no_cgroup()
pytestmark = [pytest.mark.attack, pytest.mark.trio, pytest.mark.skipif(why_not is not None, reason=why_not or "")]


class MemoryCgroup:
    """A child of the cgroup v1 memory controller with a hard limit; removed by close()."""

    def __init__(self, limit: int):
        self.path = os.path.join(CGROUP_ROOT, f"hearth-attack-{os.getpid()}")
        os.mkdir(self.path)
        self.write("memory.limit_in_bytes", limit)
        self.limit = int(self.read("memory.limit_in_bytes"))

    def read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def write(self, name: str, value) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(str(value))

    def oom_kills(self) -> int:
        fields = dict(line.split() for line in self.read("memory.oom_control").splitlines())
        return int(fields.get("oom_kill", 0))

    def close(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.rmdir(self.path)
                return
            except OSError:   # a process still in it is exiting
                time.sleep(0.1)


def usage(pid: int) -> tuple[int, int, int]:
    """(resident bytes, peak resident bytes, open descriptors) of a process."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024,
            len(os.listdir(f"/proc/{pid}/fd")))


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    v = sorted(values)
    at = lambda q: v[min(len(v) - 1, int(len(v) * q))] * 1000   # noqa: E731
    return f"{len(v)} answers, p50 {at(0.5):.0f} ms, p90 {at(0.9):.0f} ms, p99 {at(0.99):.0f} ms, max {v[-1] * 1000:.0f} ms"


def curve_flood(endpoint: str, server_key: bytes, count: int, seconds: float) -> tuple[int, int]:
    """count throwaway keys, 200 at a time, for at most seconds: each connects, says hello and is closed
    (finding 10). Returns (keys used, hellos answered). Run in a process of its own (the __main__ below), so
    that it does not wait on this test's event loop for the interpreter lock."""
    ctx = zmq.Context()
    keys = welcomed = 0
    deadline = time.monotonic() + seconds
    try:
        while keys < count and time.monotonic() < deadline:
            socks = []
            for _ in range(200):
                ident = Identity.generate()
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.curve_secretkey = zmq.utils.z85.encode(ident.curve_secret)
                s.curve_publickey = zmq.utils.z85.encode(ident.curve_public)
                s.curve_serverkey = zmq.utils.z85.encode(server_key)
                s.connect(endpoint)
                s.send_multipart(serialize_message(Hello(ident.node_id)))
                socks.append(s)
            answer_by = time.monotonic() + 10   # a batch waits 10 s at most for its welcomes, in all
            for s in socks:
                if s.poll(max(0, int((answer_by - time.monotonic()) * 1000))):
                    s.recv_multipart()
                    welcomed += 1
                s.close(0)
            keys += len(socks)
    finally:
        ctx.term()
    return keys, welcomed


async def test_f03_f04_f05_f07_f08_f10_the_agent_stays_within_its_memory_limit_under_attack(tmp_path):
    limit = to_bytes(unit_setting("MemoryMax"))
    nofile = int(unit_setting("LimitNOFILE"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)   # this process holds the attackers' sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))
    cgroup = MemoryCgroup(limit)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await _attack(nursery, tmp_path, cgroup, nofile)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        cgroup.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _attack(nursery, tmp_path, cgroup, nofile):
    rng = random.Random(20)
    # the rogue neighbour's store: the DAG bomb and the big roots (real blocks, served by a real server)
    rogue_store = Store(str(tmp_path / "rogue"))
    bomb_root = bomb(rogue_store, links=1000, levels=3)
    big_roots = []
    for i in range(BIG_ROOTS):
        (tmp_path / f"big{i}").write_bytes(rng.randbytes(BIG_ROOT))
        big_roots.append(content.add(rogue_store, str(tmp_path / f"big{i}"), chunker=Chunker()).cid)
    rogue_id = Identity.generate()
    rogue_ep = (await nursery.start(serve_transport, rogue_store, rogue_id, Policy(), "tcp://127.0.0.1:0")).endpoint
    # the neighbour that answers every hello with a 64 MiB message
    huge_id = Identity.generate()
    huge = Rogue(huge_id, lambda msg, frames: serialize_message(Welcome(huge_id.node_id, 1, ("probe",)))[:2]
                 + [bytes(HUGE)] if isinstance(msg, Hello) else None)
    gateway_port, transport_port = free_port(), free_port()
    node = Node(None, str(tmp_path / "agent"), {
        "HEARTH_MDNS": "false", "HEARTH_GATEWAY_PORT": str(gateway_port),
        "HEARTH_TRANSPORT_PORT": str(transport_port), "HEARTH_METRICS_PORT": "0", "REQUIRE_NATIVE": "1",
        "HEARTH_GATEWAY_FETCH_CLIENT": str(BUDGET_CLIENT), "HEARTH_GATEWAY_FETCH_TOTAL": str(BUDGET_TOTAL),
        "HEARTH_STATIC_PEERS": f"{rogue_id.node_id}@{rogue_ep[6:]},{huge_id.node_id}@{huge.endpoint[6:]}"})
    viewer_data = rng.randbytes(VIEWER_FILE)
    (tmp_path / "viewer").write_bytes(viewer_data)
    with Store(node.data_dir) as store:   # what the agent holds before it starts: the viewer's file
        viewer_root = content.add(store, str(tmp_path / "viewer")).cid
        leaf = next(c for c, _ in content.walk_blocks(store, viewer_root) if c != viewer_root)
        leaf_data = store.get(leaf)
    # the agent: the unit's LimitNOFILE, and in the cgroup before it executes (every page it touches is charged)
    node.proc = subprocess.Popen(
        ["sh", "-c", f'echo $$ > {cgroup.path}/cgroup.procs && exec prlimit --nofile={nofile}:{nofile} '
         f'"$@"', "sh", sys.executable, "-m", "edge", "--data-dir", node.data_dir, "run"],
        stdout=node.log, stderr=subprocess.STDOUT, env=node.env)
    try:
        await _wait_up(node)
        assert str(node.proc.pid) in cgroup.read("cgroup.procs").split()
        await _fire(tmp_path, node, cgroup, gateway_port, transport_port, viewer_root, viewer_data, leaf,
                    leaf_data, bomb_root, big_roots, huge)
    finally:
        await trio.to_thread.run_sync(node.stop, 9)
        huge.close()
        rogue_store.close()


async def _wait_up(node):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert node.proc.poll() is None, node.logs()[-3000:]
        try:
            await trio.to_thread.run_sync(node.status)
            return
        except AssertionError:
            await trio.sleep(0.2)
    raise AssertionError(f"the agent did not start: {node.logs()[-3000:]}")


async def _fire(tmp_path, node, cgroup, gport, tport, viewer_root, viewer_data, leaf, leaf_data, bomb_root,
                big_roots, huge):
    pid = node.proc.pid
    stop = trio.Event()
    figures = {"transport idle opened": 0, "gateway idle opened": 0, "gateway idle turned away": 0,
               "bomb": {}, "range": {}, "keys": 0, "welcomed": 0}
    viewer, neighbour = [], []
    peak = [0, 0, 0]   # RSS, descriptors, cgroup usage

    async def sample():
        while True:
            rss, _, fds = usage(pid)
            cg = int(cgroup.read("memory.usage_in_bytes"))
            for i, v in enumerate((rss, fds, cg)):
                peak[i] = max(peak[i], v)
            assert node.proc.poll() is None, f"the agent exited: {node.logs()[-3000:]}"
            await trio.sleep(0.5)

    async def view():
        """The viewer: the whole file, again and again, from an address of its own."""
        while not stop.is_set():
            t0 = time.monotonic()
            status, _, body, complete = await exchange(gport, request("GET", f"/ipfs/{viewer_root}"),
                                                       local="127.0.0.2", timeout=60)
            took = time.monotonic() - t0
            assert status == 200 and complete and body == viewer_data, \
                f"the viewer got {status}, {len(body)} bytes, complete={complete} after {took:.1f} s; the " \
                f"agent's warnings: {[x for x in node.logs().splitlines() if 'INFO' not in x][-20:]}"
            viewer.append(took)
            await trio.sleep(0.2)

    async def good_neighbour():
        """A real neighbour with a key of its own: a fresh connection, hello, Get of a real block."""
        me = Identity.generate()
        while not stop.is_set():
            t0 = time.monotonic()
            async with open_client(me, f"tcp://127.0.0.1:{tport}", node.node_id, timeout=20) as c:
                assert await c.get(leaf) == leaf_data
            neighbour.append(time.monotonic() - t0)
            await trio.sleep(0.2)

    async def idle(port, kind, local):
        """One idle socket, reopened each time the server closes it (findings 7 and 8)."""
        while not stop.is_set():
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
            except OSError:
                await trio.sleep(0.5)
                continue
            figures[f"{kind} idle opened"] += 1
            t0 = time.monotonic()
            try:
                while await stream.receive_some(4096):   # libzmq's greeting, a 503: until the close
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                await stream.aclose()
            if time.monotonic() - t0 < 1:
                figures[f"{kind} idle turned away"] = figures.get(f"{kind} idle turned away", 0) + 1
                await trio.sleep(0.5 + random.random())   # turned away at once: come back soon, not in a spin

    async def dag_bomb():
        """GET of the bomb through the gateway: the node fetches it from the rogue and exports it."""
        while not stop.is_set():
            status, _, body, _ = await exchange(gport, request("GET", f"/ipfs/{bomb_root}"), local="127.0.0.6",
                                                timeout=20)
            figures["bomb"][status] = figures["bomb"].get(status, 0) + 1
            await trio.sleep(0.5)

    async def launder(local):
        """Range: bytes=0-0 on each big root in turn: one byte asked, the whole root fetched (finding 5)."""
        while not stop.is_set():
            for root in big_roots:
                status, _, _, _ = await exchange(gport, request("GET", f"/ipfs/{root}", ["Range: bytes=0-0"]),
                                                 local=local, timeout=20)
                figures["range"][status] = figures["range"].get(status, 0) + 1
                await trio.sleep(0.3)

    async def keys():
        root = os.path.join(os.path.dirname(__file__), "..", "..")
        flood = await trio.run_process(
            [sys.executable, "-m", "tests.security.test_memory_under_attack", f"tcp://127.0.0.1:{tport}",
             node.node_id, str(CURVE_KEYS), str(ATTACK)], cwd=root, capture_stdout=True, capture_stderr=True,
            env={**os.environ, "PYTHONPATH": os.path.abspath(root)})
        figures["keys"], figures["welcomed"] = map(int, flood.stdout.split())

    before = usage(pid)
    t0 = time.monotonic()
    with trio.fail_after(TIME_LIMIT):
        async with trio.open_nursery() as n:
            n.start_soon(sample)
            n.start_soon(view)
            n.start_soon(good_neighbour)
            n.start_soon(keys)
            for _ in range(TRANSPORT_IDLE):
                n.start_soon(idle, tport, "transport", "127.0.0.1")
            for _ in range(GATEWAY_IDLE):
                n.start_soon(idle, gport, "gateway", "127.0.0.7")
            n.start_soon(dag_bomb)
            n.start_soon(launder, "127.0.0.4")
            n.start_soon(launder, "127.0.0.5")
            await trio.sleep(ATTACK)
            stop.set()
            await trio.sleep(1)
            while figures["keys"] == 0:   # the flood's process ends by itself at its deadline (a batch's wait)
                await trio.sleep(0.2)
            n.cancel_scope.cancel()   # the idle sockets and whatever still waits on an answer
        elapsed = time.monotonic() - t0
        # the attacks are over: the agent is up and answers as before
        assert node.proc.poll() is None, node.logs()[-3000:]
        status = await trio.to_thread.run_sync(node.status)
        after = usage(pid)
        got, _, body, complete = await exchange(gport, request("GET", f"/ipfs/{viewer_root}"), local="127.0.0.2")
        assert got == 200 and body == viewer_data
    with open(f"/proc/{pid}/stat") as f:   # the agent's user + system CPU time, to read the latencies by
        cpu = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13]) / os.sysconf("SC_CLK_TCK")
    oom = cgroup.oom_kills()
    cg_peak = int(cgroup.read("memory.max_usage_in_bytes"))
    failcnt = int(cgroup.read("memory.failcnt"))
    stored = status["store"]
    print(f"\nmemory under attack for {elapsed:.0f} s, limit {cgroup.limit >> 20} MiB (MemoryMax), "
          f"LimitNOFILE {unit_setting('LimitNOFILE')}:\n"
          f"  agent RSS {before[0] / 1e6:.0f} -> {after[0] / 1e6:.0f} MB, peak RSS (VmHWM) {after[1] / 1e6:.0f} MB; "
          f"cgroup peak {cg_peak / 1e6:.0f} MB (page cache included), sampled peak {peak[2] / 1e6:.0f} MB; "
          f"limit hit {failcnt} times (reclaim), OOM kills {oom}\n"
          f"  descriptors {before[2]} -> {after[2]}, peak {peak[1]}\n"
          f"  f03 messages of {HUGE >> 20} MiB sent by the rogue: {huge.received} hellos received, "
          f"{huge.disconnects()} connections dropped by the agent\n"
          f"  f04 bomb GETs: {figures['bomb']}\n"
          f"  f05 Range: bytes=0-0 on {len(big_roots)} roots of {BIG_ROOT >> 20} MiB: {figures['range']}; "
          f"store {stored}\n"
          f"  f07 transport connections opened {figures['transport idle opened']} "
          f"(held {TRANSPORT_IDLE} at once)\n"
          f"  f08 gateway connections opened {figures['gateway idle opened']}, turned away at once "
          f"{figures.get('gateway idle turned away', 0)} (held {GATEWAY_IDLE} at once)\n"
          f"  f10 throwaway keys {figures['keys']}, welcomed {figures['welcomed']}; peer states the server "
          f"forgot {status['served'].get('peers_forgotten', 0)} (it keeps at most 4,096)\n"
          f"  the agent used {cpu:.0f} s of CPU; this machine's load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs\n"
          f"  viewer: {percentiles(viewer)}\n  neighbour: {percentiles(neighbour)}")
    assert oom == 0, f"the agent was OOM-killed in its cgroup: {node.logs()[-3000:]}"
    assert after[1] < cgroup.limit
    assert viewer and neighbour                      # both were answered during the attack (each answer checked)
    assert figures["range"].get(429, 0) > 0          # the fetch budget stopped the laundering
    assert stored["bytes"] < BUDGET_TOTAL + VIEWER_FILE + 2 * BIG_ROOT   # and so bounded what it stored



if __name__ == "__main__":   # the key flood's own process: ENDPOINT NODE_ID COUNT SECONDS
    endpoint, node_id, count, seconds = sys.argv[1:5]
    print(*curve_flood(endpoint, check_node_id(node_id), int(count), float(seconds)))
