"""A household on one machine (issue 19's acceptance, the governor's benchmark): the Hearth node is the
household's router, a LAN-side namespace is a household member's computer, and an "internet" namespace holds a
Hearth neighbour across the WAN and a sink for the household's uploads.

    house (10.S.1.2) --lan0-- home (router: 10.S.1.1 | 10.S.2.1, Hearth A) --wan0-- net (10.S.2.2, Hearth B, sink)

home forwards packets, holds the default route on wan0 (so the governor reads wan0's counters: the router
signal) and shapes wan0's egress (the uplink) with tc tbf (this kernel has no netem).
"""

import os
import subprocess
import sys
import threading
import time

from edge.control import ask
from tests.agent.netns import Node, sh

SINK_PORT = 5001
SINK = """
import socket, threading
l = socket.create_server(("0.0.0.0", %d), backlog=64)
def drain(c):
    with c:
        while c.recv(1 << 20):
            pass
while True:
    c, _ = l.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
""" % SINK_PORT
SENDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], %d))
print("connected", flush=True)
block, end = bytes(65536), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    s.sendall(block)
""" % SINK_PORT


class Household:
    def __init__(self, rate: str = "20mbit", latency: str = "50ms"):
        tag = f"{os.getpid() % 10000}"
        self.home, self.house, self.net = f"hgh{tag}", f"hgl{tag}", f"hgn{tag}"
        self.s = 10 + os.getpid() % 200
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        try:
            self._make(tag, rate, latency)
        except BaseException:
            self.close()
            raise

    def ip(self, net: int, host: int) -> str:
        return f"10.{self.s}.{net}.{host}"

    def _make(self, tag, rate, latency):
        for ns in (self.home, self.house, self.net):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"hgw{tag}", "type", "veth", "peer", "name", "eth0", "netns", self.net)
        sh("ip", "link", "set", f"hgw{tag}", "netns", self.home)
        sh("ip", "-n", self.home, "link", "set", f"hgw{tag}", "name", "wan0")
        sh("ip", "link", "add", f"hgb{tag}", "type", "veth", "peer", "name", "eth0", "netns", self.house)
        sh("ip", "link", "set", f"hgb{tag}", "netns", self.home)
        sh("ip", "-n", self.home, "link", "set", f"hgb{tag}", "name", "lan0")
        for ns, dev, addr in ((self.home, "wan0", self.ip(2, 1)), (self.home, "lan0", self.ip(1, 1)),
                              (self.net, "eth0", self.ip(2, 2)), (self.house, "eth0", self.ip(1, 2))):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "netns", "exec", self.home, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", self.home, "route", "add", "default", "via", self.ip(2, 2), "dev", "wan0")
        sh("ip", "-n", self.house, "route", "add", "default", "via", self.ip(1, 1))
        sh("ip", "-n", self.net, "route", "add", f"10.{self.s}.1.0/24", "via", self.ip(2, 1))
        # the uplink: the router's WAN egress shaped to the household's upload rate
        sh("ip", "netns", "exec", self.home, "tc", "qdisc", "add", "dev", "wan0", "root", "tbf", "rate", rate,
           "burst", "64kb", "latency", latency)
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.net, sys.executable, "-c", SINK]))

    def node(self, which: str, data_dir: str, env: dict) -> Node:
        return Node(self.home if which == "home" else self.net, data_dir,
                    {"HEARTH_MDNS": "false", "HEARTH_METRICS_PORT": "0", "HEARTH_GATEWAY_PORT": "0",
                     "REQUIRE_NATIVE": "1", **env})

    def wire_tx(self) -> int:
        """Bytes that left the router's WAN interface (the uplink), as the kernel counts them."""
        out = subprocess.run(["ip", "netns", "exec", self.home, "cat", "/sys/class/net/wan0/statistics/tx_bytes"],
                             capture_output=True, text=True, check=True).stdout
        return int(out)

    def flow(self, seconds: float) -> tuple[subprocess.Popen, float]:
        """A household upload from the LAN side to the internet for seconds; (the process, when it connected)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.house, sys.executable, "-c", SENDER, self.ip(2, 2),
                              str(seconds)], stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        assert line.strip() == "connected", "the household flow could not connect"
        return p, time.monotonic()

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []


class Sender:
    """Samples Hearth A's WAN upload (the governor's count of what it sent to WAN peers) through its control
    socket, every `every` seconds, in a thread: [(monotonic time, bytes sent to WAN peers, back-off active)]."""

    def __init__(self, node: Node, every: float = 0.1):
        self.sock = os.path.join(node.data_dir, "control.sock")
        self.every = every
        self.samples: list[tuple[float, int, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                g = ask(self.sock, "status", timeout=5)["governor"]
                self.samples.append((time.monotonic(), g["carried"]["up_wan"], g["backoff"]["active"]))
            except (OSError, ConnectionError, KeyError, ValueError):
                pass
            time.sleep(self.every)

    def stop(self):
        self._stop.set()
        self._thread.join()

    def rate(self, t0: float, t1: float) -> float:
        """Bytes/s sent to WAN peers between t0 and t1 (the samples nearest inside)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        (a, x, _), (b, y, _) = inside[0], inside[-1]
        return (y - x) / (b - a) if b > a else 0.0

    def rates(self, window: float = 0.5):
        """[(time, rate over the window ending then)] for every sample a window after the first."""
        out = []
        for i, (t, n, _) in enumerate(self.samples):
            j = i
            while j > 0 and t - self.samples[j - 1][0] <= window:
                j -= 1
            if j < i:
                out.append((t, (n - self.samples[j][1]) / (t - self.samples[j][0])))
        return out


def fetch_in_background(node: Node, cid: str) -> threading.Event:
    """node fetches cid (from its neighbours) in a thread, as a reader would: a fetch that fails (a neighbour
    backed off to its floor answers BUSY until the fetch gives it up) is started again, until one completes or
    the returned event is set."""
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                ask(os.path.join(node.data_dir, "control.sock"), "fetch", timeout=300, cid=cid)
                return
            except (OSError, ConnectionError):
                time.sleep(0.2)
    threading.Thread(target=run, daemon=True).start()
    return stop
