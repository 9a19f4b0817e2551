"""Several nodes on one machine: network namespaces joined by a bridge in its own namespace (DESIGN.md).

Addresses come from a private /24 that exists only inside these namespaces. The control sockets are files,
so the test (in the host namespace) talks to each agent through them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT_NEEDED = "network namespaces need root (ip netns)"


def can_use_netns() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return ROOT_NEEDED
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"hprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def wait_for(what, check, timeout):
    """Poll check() until it is true; AssertionError naming what did not happen within timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, text=True)


def mount_tmpfs(path: str, size: int) -> None:
    """A small disk of its own at path (a tmpfs of size bytes), for a node whose disk is to fill up."""
    os.makedirs(path, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path)


def unmount(path: str) -> None:
    """Unmount what mount_tmpfs put at path; lazily if something still holds it open."""
    if subprocess.run(["umount", path], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", path], capture_output=True)


class Lan:
    """A bridge namespace and n node namespaces with 10.<x>.0.<i>/24 addresses."""

    def __init__(self, n: int):
        tag = f"{os.getpid() % 10000}"
        self.bridge = f"hbr{tag}"
        self.names = [f"hn{tag}x{i}" for i in range(1, n + 1)]
        self.subnet = 10 + os.getpid() % 200
        self.made: list[str] = []   # the namespaces this instance created: only those are removed
        try:
            self._make(tag)
        except BaseException:
            self.close()   # what was made before the failure goes too
            raise

    def _add(self, ns: str):
        sh("ip", "netns", "add", ns)
        self.made.append(ns)

    def _make(self, tag: str):
        self._add(self.bridge)
        sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names, 1):
            self._add(ns)
            veth = f"hv{tag}x{i}"
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "netns", self.bridge)
            sh("ip", "-n", self.bridge, "link", "set", veth, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def address(self, i: int) -> str:
        return f"10.{self.subnet}.0.{i}"

    def close(self):
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []


class Node:
    """`hearth run` in a namespace (or in this one when ns is None), with its own data directory."""

    def __init__(self, ns: str, data_dir: str, env: dict | None = None, log_path: str | None = None):
        """log_path: where the agent's output goes (default DATA_DIR/agent.log; elsewhere for a data disk
        that is to fill up, so the log still tells why)."""
        from edge.identity import KEY_FILE, Identity
        self.ns, self.data_dir = ns, data_dir
        self.env = {**os.environ, "HEARTH_GATEWAY_PORT": "0", **(env or {})}
        self.hearth("init")
        self.node_id = Identity.load(os.path.join(data_dir, KEY_FILE)).node_id
        self.log_path = log_path or os.path.join(data_dir, "agent.log")
        self.log = open(self.log_path, "w")
        self.proc = None
        self.wrap: list[str] = []     # a command the agent runs under (e.g. a system-call filter)

    def run(self, *args, timeout: float | None = None, text: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge", "--data-dir", self.data_dir, *args],
                              capture_output=True, text=text, env=self.env, timeout=timeout)

    def hearth(self, *args) -> str:
        r = self.run(*args)
        if r.returncode != 0:
            raise AssertionError(f"hearth {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def start(self, *args):
        return self.launch(*args).ready()

    def launch(self, *args):
        """Start the agent without waiting for it (several start at once, then each is waited for: ready())."""
        prefix = ["ip", "netns", "exec", self.ns] if self.ns else []
        self.proc = subprocess.Popen([*prefix, *self.wrap, sys.executable, "-m", "edge", "--data-dir", self.data_dir,
                                      "run", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def ready(self, timeout: float = 20.0):
        """Wait until the launched agent answers on its control socket."""
        from edge.control import ask
        # ready once its control socket answers; asked directly, as `hearth status` does (a `hearth status`
        # process for each poll cost more CPU than the agent's start on a busy machine)
        control = os.path.join(self.data_dir, "control.sock")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(control):
                try:
                    ask(control, "status", timeout=5)
                    return self
                except (OSError, ValueError):
                    pass
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited: {self.logs()}")
            time.sleep(0.1)
        raise AssertionError(f"the agent did not start: {self.logs()}")

    def status(self) -> dict:
        return json.loads(self.hearth("status", "--json"))

    def peers(self) -> list[dict]:
        return json.loads(self.hearth("peers", "--json"))

    def logs(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=10.0) -> float:
        """Signal the agent; returns how long it took to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout)
        return time.monotonic() - t0
