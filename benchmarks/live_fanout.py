"""Live fan-out through a chain of relays: five agents on loopback (static peers, no mDNS), live_direct = 1 and
live_relay = 1, so the publisher A sends to B, B relays to C, C to D and D to E (three relays between A and E).
A's agent runs a 240p test pattern; a viewer on each node keeps it followed. Prints cut -> playable at each
depth (p50, p99) and each node's CPU per MB it relayed (its whole process, against E's, which relays nothing).

    python benchmarks/live_fanout.py [--seconds 30]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = "ABCDE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hearth(data_dir: str, *args, env=None, check=True) -> str:
    r = subprocess.run([sys.executable, "-m", "edge", "--data-dir", data_dir, *args], capture_output=True, text=True,
                       env=env, timeout=120)
    if check and r.returncode != 0:
        sys.exit(f"hearth {' '.join(args)} failed: {r.stderr}")
    return r.stdout


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(node: dict) -> dict:
    return json.loads(hearth(node["dir"], "status", "--json", env=node["env"]))


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))] if v else float("nan")


def want(node: dict, publisher: str) -> None:
    url = f"http://127.0.0.1:{node['gateway']}/streams/cam@{publisher}/240p/index.m3u8"
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except (urllib.error.URLError, OSError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to measure")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="hearth-fanout-")
    nodes, procs, live = [], [], None
    try:
        for name in NODES:
            d = os.path.join(tmp, name)
            node = {"name": name, "dir": d, "port": free_port(), "gateway": free_port()}
            node["env"] = {**os.environ, "PYTHONPATH": ROOT, "HEARTH_MDNS": "false", "HEARTH_LISTEN": "127.0.0.1",
                           "HEARTH_TRANSPORT_PORT": str(node["port"]), "HEARTH_GATEWAY_PORT": str(node["gateway"]),
                           "HEARTH_METRICS_PORT": "0", "HEARTH_LIVE_DIRECT": "1", "HEARTH_LIVE_RELAY": "1"}
            hearth(d, "init", env=node["env"])
            node["id"] = _node_id(d)
            nodes.append(node)
        for node in nodes:
            peers = ",".join(f"{o['id']}@127.0.0.1:{o['port']}" for o in nodes if o is not node)
            node["env"]["HEARTH_STATIC_PEERS"] = peers
            log = open(os.path.join(node["dir"], "agent.log"), "w")
            node["proc"] = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", node["dir"], "run"],
                                            stdout=log, stderr=subprocess.STDOUT, env=node["env"])
            procs.append(node["proc"])
        _wait(lambda: all(_answers(n) for n in nodes), 30, "the agents to start")
        a = nodes[0]
        live = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", a["dir"], "live", "publish", "testsrc",
                                 "--name", "cam", "--ladder", "240p", "--segment-seconds", "1", "--preset",
                                 "ultrafast", "--no-record", "--duration", str(args.seconds + 60)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=a["env"])
        _wait(lambda: any(s["name"] == "cam" for n in nodes[1:2] for s in _listed(n)), 40, "B to list the stream")
        for node in nodes[1:]:                 # one after the other: each joins the chain below the last
            _wait(lambda: _following(node, a["id"]) is not None or want(node, a["id"]), 20,
                  f"{node['name']} to follow the stream")
            time.sleep(1.0)
        chain = {n["name"]: _following(n, a["id"]) for n in nodes[1:]}
        names = {n["id"]: n["name"] for n in nodes}
        print("chain:", ", ".join(f"{k} <- {names.get(v, v)}" for k, v in chain.items()))
        before = {n["name"]: (cpu_seconds(n["proc"].pid), status(n)["services"]["fanout"]) for n in nodes}
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for node in nodes[1:]:
                want(node, a["id"])
            time.sleep(2.0)
        print(f"{'node':>4} {'hops':>4} {'segments':>8} {'p50 ms':>8} {'p99 ms':>8} {'relayed MB':>10} "
              f"{'CPU s':>6} {'CPU s/MB':>8} {'over E':>8}")
        follower = cpu_seconds(nodes[-1]["proc"].pid) - before[nodes[-1]["name"]][0]
        for depth, node in enumerate(nodes):
            fan = status(node)["services"]["fanout"]
            cpu = cpu_seconds(node["proc"].pid) - before[node["name"]][0]
            lat = fan["cut_to_playable_ms"][len(before[node["name"]][1]["cut_to_playable_ms"]):]
            relayed = (fan["relayed"] - before[node["name"]][1]["relayed"]) / 1e6
            per_mb = f"{cpu / relayed:8.2f}" if relayed > 0 else f"{'-':>8}"
            over = f"{(cpu - follower) / relayed:8.3f}" if relayed > 0 else f"{'-':>8}"
            print(f"{node['name']:>4} {depth:>4} {len(lat):>8} {pct(lat, 0.5):>8} {pct(lat, 0.99):>8} "
                  f"{relayed:>10.2f} {cpu:>6.2f} {per_mb} {over}")
        print("segments: media segments of every track made playable there; CPU: each agent's whole "
              "process over the run; over E: CPU s per relayed MB beyond E's, which follows and relays nothing")
    finally:
        if live is not None and live.poll() is None:
            live.kill()
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _node_id(data_dir: str) -> str:
    sys.path.insert(0, ROOT)
    from edge.identity import KEY_FILE, Identity
    return Identity.load(os.path.join(data_dir, KEY_FILE)).node_id


def _answers(node: dict) -> bool:
    return subprocess.run([sys.executable, "-m", "edge", "--data-dir", node["dir"], "status"], capture_output=True,
                          env=node["env"]).returncode == 0


def _listed(node: dict) -> list:
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{node['gateway']}/api/streams", timeout=5).read())
    except (urllib.error.URLError, OSError, ValueError):
        return []


def _following(node: dict, publisher: str):
    return status(node)["services"]["fanout"]["following"].get(f"cam@{publisher}", {}).get("source")


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    sys.exit(f"timed out waiting for {what}")


if __name__ == "__main__":
    main()
