"""The governor's costs and reaction (issue 19).

transfer: 256 KiB blocks served to a neighbour over the transport (ZeroMQ + CURVE, real store, every block checked
  by the receiver), each side its own process: with the governor active but not limiting (caps of 10 GB/s on
  every lane, so every block pays a token bucket and is counted by link class; the governor's service ticking
  beside the server; the receiver paying its download lane) against without it (the plain unlimited upload and
  no download lane). Goal >= 0.97x.
backoff: on a household's router in namespaces (tests/agent/household.py; root), Hearth serving a WAN
  neighbour, FLOWS household uploads started one after another: the time from each one's start until the
  governor's back-off began and until Hearth's WAN send rate (over 0.5 s) fell under wan_floor; p50 and p99.
  Each run is its own pair of processes; ROUNDS runs of each, alternating (and which goes first alternating),
  and the median of the paired ratios with their spread, and the CPU-seconds each spends per GB (server and
  client processes: steadier than wall time on a shared machine).
Usage: governor.py [transfer] [backoff] [--blocks N] [--passes N] [--rounds N] [--flows N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import goal, print_table, require_native  # noqa: E402

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
ROUNDS = 5
PASSES = 5      # each run fetches the blocks this many times (~1.5 GB, some seconds: a 0.3 s run is all noise)
HIGH = 10_000_000_000   # a cap that never limits


# roles (each its own process) -------------------------------------------------------------------------------------

def server_role(data_dir: str, governed: str):
    import functools

    import trio

    from edge.governor.caps import UP
    from edge.governor.governor import Governor
    from edge.governor.links import WAN, LinkClassifier
    from edge.governor.service import serve_governor
    from edge.identity import Identity
    from edge.store import Store
    from edge.transport.server import Policy, serve_transport

    async def main():
        identity = Identity.generate()
        with Store(data_dir) as store:
            async with trio.open_nursery() as nursery:
                if governed == "1":
                    g = Governor(classifier=LinkClassifier(), wan_up=HIGH, lan_up=HIGH, wan_down=HIGH,
                                 lan_down=HIGH)
                    await nursery.start(functools.partial(serve_governor, g, backoff="off"))
                    policy = Policy(upload=g.caps.lanes[(UP, WAN)], upload_for=g.upload_for)
                else:
                    policy = Policy()
                server = await nursery.start(functools.partial(serve_transport, store, identity, policy,
                                                               "tcp://127.0.0.1:0"))
                print(json.dumps({"endpoint": server.endpoint, "node": identity.node_id}), flush=True)
                await trio.sleep_forever()
    trio.run(main)


def client_role(endpoint: str, node: str, cids_file: str, governed: str, passes: str):
    import trio

    from edge.governor.governor import Governor
    from edge.governor.links import LinkClassifier
    from edge.identity import Identity
    from edge.ipld.cid import parse_cid
    from edge.transport.client import open_client
    with open(cids_file) as f:
        cids = [parse_cid(c) for c in json.load(f)]
    lane = None
    if governed == "1":
        lane = Governor(classifier=LinkClassifier(), wan_down=HIGH, lan_down=HIGH).download_for("127.0.0.1")

    async def main():
        async with open_client(Identity.generate(), endpoint, node, timeout=30) as client:
            await client.get(cids[0])
            total, t0, c0 = 0, time.perf_counter(), time.process_time()
            for _ in range(int(passes)):   # the blocks again: a run long enough to outlast a neighbour's burst
                async for data in client.get_many(cids, depth=16):   # as a fetch pulls: 16 in flight
                    total += len(data)
                    if lane is not None:
                        await lane.spend(len(data))
            print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                              "bytes": total}))
    trio.run(main)


# orchestration ----------------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process pid has used (all its threads: the transport's serving thread too)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(tmp: str, governed: str, passes: int) -> dict:
    """One transfer: a server process and a client process; its wall rate and the CPU both spent on it."""
    server = subprocess.Popen([sys.executable, HERE, "--role", "server", os.path.join(tmp, "store"), governed],
                              stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(server.stdout.readline())
        cpu0 = cpu_seconds(server.pid)   # after its start: imports and opening the store are not the transfer's
        out = subprocess.run([sys.executable, HERE, "--role", "client", info["endpoint"], info["node"],
                              os.path.join(tmp, "cids"), governed, str(passes)], capture_output=True, text=True,
                             timeout=300)
        cpu1 = cpu_seconds(server.pid)
        if out.returncode:
            sys.exit(f"the client failed: {out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        return {"rate": r["bytes"] / r["seconds"], "bytes": r["bytes"], "server_cpu": cpu1 - cpu0,
                "client_cpu": r["cpu"]}
    finally:
        server.terminate()
        server.wait()


def transfer(blocks: int, rounds: int, passes: int) -> list[tuple[dict, dict]]:
    """rounds pairs of runs (without, governed), the two alternating and which goes first alternating too, so a
    neighbour's burst of load on this shared machine falls on both alike; [(without, governed)]."""
    from edge.ipld.cid import CID
    from edge.store import Store
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = [os.urandom(256 << 10) for _ in range(blocks)]
        cids = [CID.for_block(b) for b in data]
        with Store(os.path.join(tmp, "store")) as store:
            store.put_many(list(zip(cids, data)))
        with open(os.path.join(tmp, "cids"), "w") as f:
            json.dump([str(c) for c in cids], f)
        one_run(tmp, "0", 1)   # a warm-up: the store's pages in the page cache before anything is timed
        for i in range(rounds):
            order = ("0", "1") if i % 2 == 0 else ("1", "0")
            runs = {governed: one_run(tmp, governed, passes) for governed in order}
            pairs.append((runs["0"], runs["1"]))
            w, g = runs["0"], runs["1"]
            print(f"  round {i + 1}: without {w['rate'] / 1e6:.1f} MB/s, governed {g['rate'] / 1e6:.1f} MB/s "
                  f"(ratio {g['rate'] / w['rate']:.3f}); CPU s/GB without {cpu_per_gb(w):.2f}, governed "
                  f"{cpu_per_gb(g):.2f}", flush=True)
    return pairs


def cpu_per_gb(run: dict) -> float:
    return (run["server_cpu"] + run["client_cpu"]) / (run["bytes"] / 1e9)


def backoff(flows: int) -> tuple[list[float], list[float]]:
    sys.path.insert(0, ROOT)
    from tests.agent.household import Household, Sender, fetch_in_background
    began_at, under_at = [], []
    with tempfile.TemporaryDirectory() as tmp:
        net = Household()
        nodes = []
        try:
            a = net.node("home", f"{tmp}/a", {"HEARTH_LISTEN": "all", "HEARTH_TRANSPORT_PORT": "4801",
                                              "HEARTH_UPLOAD_LIMIT": "1500000", "HEARTH_BACKOFF": "router"})
            with open(f"{tmp}/f", "wb") as f:
                f.write(os.urandom(512 << 20))
            cid = json.loads(a.hearth("add", "--json", f"{tmp}/f"))["cid"]
            b = net.node("net", f"{tmp}/b", {"HEARTH_TRANSPORT_PORT": "4801",
                                             "HEARTH_STATIC_PEERS": f"{a.node_id}@{net.ip(2, 1)}:4801"})
            for node in (a, b):
                node.start()
                nodes.append(node)
            sender = Sender(a, every=0.05)
            fetching = fetch_in_background(b, cid)
            try:
                for i in range(flows):
                    # Hearth sending well above the floor again (recovered from the last flow)
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        rates = sender.rates(0.5)
                        if rates and rates[-1][1] > 10 * 65536 and not sender.samples[-1][2]:
                            break
                        time.sleep(0.1)
                    flow, began = net.flow(2.0)
                    time.sleep(2.5)
                    flow.wait()
                    active = next((t for t, _, on in sender.samples if t >= began and on), None)
                    under = next((t for t, r in sender.rates(0.5) if t >= began and r <= 65536), None)
                    began_at.append(active - began if active else float("inf"))
                    under_at.append(under - began if under else float("inf"))
                    print(f"  flow {i + 1}: back-off after {began_at[-1]:.2f} s, under the floor after "
                          f"{under_at[-1]:.2f} s", flush=True)
            finally:
                fetching.set()
                sender.stop()
        finally:
            for node in nodes:
                node.stop()
            net.close()
    return began_at, under_at


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("parts", nargs="*", default=["transfer", "backoff"])
    parser.add_argument("--blocks", type=int, default=1200)
    parser.add_argument("--flows", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--passes", type=int, default=PASSES)
    args = parser.parse_args()
    if args.role:
        {"server": server_role, "client": client_role}[args.role[0]](*args.role[1:])
        return
    require_native("edge.kernels._hashing")
    if "transfer" in args.parts:
        pairs = transfer(args.blocks, args.rounds, args.passes)
        ratios = [g["rate"] / w["rate"] for w, g in pairs]
        cpu_ratios = [cpu_per_gb(g) / cpu_per_gb(w) for w, g in pairs]
        med = statistics.median
        rows = []
        for name, k in (("without the governor", 0), ("governor active, not limiting", 1)):
            runs = [p[k] for p in pairs]
            rates = [r["rate"] / 1e6 for r in runs]
            rows.append([name, med(rates), min(rates), max(rates), med([cpu_per_gb(r) for r in runs]),
                         med([r["server_cpu"] / (r["bytes"] / 1e9) for r in runs]),
                         med([r["client_cpu"] / (r["bytes"] / 1e9) for r in runs])])
        print_table(f"256 KiB blocks to a neighbour, {args.blocks} blocks x {args.passes} passes, {args.rounds} "
                    "interleaved rounds of each (medians)",
                    ["", "MB/s", "min", "max", "CPU s/GB", "server", "client"], rows)
        ratio = med(ratios)
        print(f"  throughput ratio governed/without, paired by round: median {ratio:.3f}x, spread "
              f"{min(ratios):.3f}-{max(ratios):.3f} ({goal(ratio, 0.97)}); the ratio of the two medians "
              f"{rows[1][1] / rows[0][1]:.3f}x")
        print(f"  CPU per GB governed/without, paired by round: median {med(cpu_ratios):.3f}x, spread "
              f"{min(cpu_ratios):.3f}-{max(cpu_ratios):.3f} (the steadier figure on a shared machine: "
              f"{1 / med(cpu_ratios):.3f}x as many bytes per CPU-second)")
    if "backoff" in args.parts:
        if os.geteuid() != 0:
            sys.exit("the back-off benchmark makes network namespaces: run it as root")
        began, under = backoff(args.flows)
        print_table(f"back-off reaction over {args.flows} household uploads (seconds from the flow's start)",
                    ["", "p50", "p99", "max"],
                    [["back-off began", pct(began, .5), pct(began, .99), max(began)],
                     ["Hearth under the floor (0.5 s window)", pct(under, .5), pct(under, .99), max(under)]])
        print(f"  mean under the floor {statistics.mean(under):.2f} s; goal <= 2 s")


if __name__ == "__main__":
    main()
