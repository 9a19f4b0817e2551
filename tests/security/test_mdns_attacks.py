"""The mDNS attacks of issue 20 on real multicast (and its mDNS fuzz acceptance): three agents and a hostile host
in network namespaces on one bridge. The hostile host announces, with zeroconf, a node id that is not a valid
point (finding 1, which stopped every agent), aliases of a real node's id (17), the real node's id from its own
address and under the real node's own name (9), a huge TXT, bad ports, control characters, a flood of a few
hundred neighbours (7), then forged goodbyes; at the same time it sends thousands of packets built byte by byte
(mdns_fuzzer.py): garbage, truncated records, compression loops, bad and aliased ids, huge TXT, loopback and
multicast addresses, real ids and real names from its own address with the cache-flush bit, other ids at the real
nodes' addresses, forged goodbyes and a flood of fresh ids. No agent stops, each lists the other two, verified at
their own addresses, and memory and descriptors stay bounded (printed).

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for

why_not = can_use_netns()
pytestmark = [pytest.mark.attack, pytest.mark.skipif(why_not is not None, reason=why_not or "")]
ATTACKER = os.path.join(os.path.dirname(__file__), "mdns_attacker.py")
FUZZER = os.path.join(os.path.dirname(__file__), "mdns_fuzzer.py")
PACKETS = 4000     # packets the fuzzer sends ...
FUZZ_TIME = 10.0   # ... spread over this many seconds
FLOOD = 300        # neighbours the flood announces
HOLD = 8.0         # seconds the hostile records stay announced before the goodbyes


def usage(pid: int) -> tuple[int, int]:
    """(resident bytes, open descriptors) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def lan():
    net = Lan(4)
    yield net
    net.close()


def test_f01_f09_f17_f07_hostile_announcements_and_a_fuzz_stop_none_of_three_agents(lan, tmp_path):
    env = {"HEARTH_PEER_EXPIRY": "8", "HEARTH_METRICS_PORT": "0"}
    agents = [Node(lan.names[i], str(tmp_path / name), env) for i, name in enumerate("abc")]
    a, b, c = agents
    address = {n.ns: lan.address(i) for i, n in enumerate(agents, 1)}
    hostile = lan.address(4)
    attackers = []
    try:
        with concurrent.futures.ThreadPoolExecutor(len(agents)) as pool:   # the agents start side by side
            list(pool.map(lambda node: node.start(), agents))

        def sees(node, other):
            for p in node.peers():
                if p["node"] == other.node_id:
                    return p["rtt_ms"] is not None and address[other.ns] in p.get("verified", [])
            return False

        def all_see_each_other():
            return all(sees(n, m) for n in agents for m in agents if n is not m)
        wait_for("the three agents verifying each other", all_see_each_other, timeout=30)
        before = {n.ns: usage(n.proc.pid) for n in agents}
        port_b = int(b.status()["endpoint"].rsplit(":", 1)[1])
        run_in = ["ip", "netns", "exec", lan.names[3], sys.executable]
        attackers.append(subprocess.Popen(
            [*run_in, ATTACKER, hostile, b.node_id, address[b.ns], str(port_b), str(FLOOD), str(HOLD)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}))
        attackers.append(subprocess.Popen(
            [*run_in, FUZZER, hostile, ",".join(n.node_id for n in agents), ",".join(address.values()),
             str(PACKETS), str(FUZZ_TIME)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}))
        most, peak = {n.ns: 0 for n in agents}, {n.ns: (0, 0) for n in agents}
        deadline = time.monotonic() + max(HOLD, FUZZ_TIME) + 60
        while any(p.poll() is None for p in attackers) and time.monotonic() < deadline:   # sample meanwhile
            for n in agents:
                assert n.proc.poll() is None, n.logs()[-3000:]
                most[n.ns] = max(most[n.ns], len(n.peers()))
                peak[n.ns] = tuple(max(x, y) for x, y in zip(peak[n.ns], usage(n.proc.pid)))
            time.sleep(1)
        (out, err), (fuzz_out, fuzz_err) = (p.communicate(timeout=30) for p in attackers)
        print(out, err[-2000:], fuzz_out, fuzz_err[-2000:])
        print(f"during the attack: at most {most} neighbours listed; peaks (RSS, descriptors): {peak}")
        assert "done" in out and "announced bad point x1" in out and "announced flood" in out
        assert "done" in fuzz_out and "sent bad point id" in fuzz_out and "sent garbage" in fuzz_out
        assert all(m <= 256 for m in most.values())
        time.sleep(3)   # the goodbyes arrive and a probing round passes
        for node in agents:
            assert node.proc.poll() is None, node.logs()[-3000:]
        after = {n.ns: usage(n.proc.pid) for n in agents}
        for node in agents:
            (rss0, fds0), (rss1, fds1) = before[node.ns], after[node.ns]
            print(f"{node.ns}: RSS {rss0 / 1e6:.1f} -> {rss1 / 1e6:.1f} MB (peak {peak[node.ns][0] / 1e6:.1f}), "
                  f"descriptors {fds0} -> {fds1} (peak {peak[node.ns][1]}), {len(node.peers())} neighbours listed")
            assert peak[node.ns][1] < 1000
            assert peak[node.ns][0] < 256 << 20   # the unit's MemoryMax
            for other in agents:   # the real neighbours stay listed, not rejected, at their own addresses
                if other is not node:
                    listed = [p for p in node.peers() if p["node"] == other.node_id]
                    assert len(listed) == 1 and not listed[0]["rejected"], listed
                    assert address[other.ns] in listed[0]["verified"] and listed[0]["rtt_ms"] is not None
            assert "ignoring an announcement" in node.logs()
        # the hostile host is gone: the real neighbours are still there, the flood expires
        wait_for("the flood expiring", lambda: all(len(n.peers()) <= 3 for n in agents), timeout=30)
        assert all_see_each_other() and all(n.proc.poll() is None for n in agents)
        # and fetches across as before
        src = tmp_path / "f"
        src.write_bytes(os.urandom(300_000))
        cid = json.loads(b.hearth("add", "--json", str(src)))["cid"]
        for node, copy in ((a, "copy_a"), (c, "copy_c")):
            node.hearth("get", cid, "-o", str(tmp_path / copy))
            assert (tmp_path / copy).read_bytes() == src.read_bytes()
    finally:
        for p in attackers:
            if p.poll() is None:
                p.kill()
                p.wait()
        for node in agents:
            node.stop(signal.SIGKILL)
