"""Three agents in network namespaces on one bridge: real mDNS, real ZeroMQ with CURVE, real stores.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

import hashlib
import json
import os
import signal
import time

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for

why_not = can_use_netns()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


@pytest.fixture
def lan():
    net = Lan(3)
    yield net
    net.close()


@pytest.fixture
def nodes(lan, tmp_path):
    made = []

    def make(i, env=None):
        node = Node(lan.names[i - 1], str(tmp_path / f"node{i}"), env)
        made.append(node)
        return node
    yield make
    for node in made:
        node.stop(signal.SIGKILL)


def test_three_nodes_discover_each_other_and_fetch_across(nodes, tmp_path):
    a, b, c = (nodes(i, {"HEARTH_PEER_EXPIRY": "4"}) for i in (1, 2, 3))
    t0 = time.monotonic()
    for node in (a, b, c):
        node.start()
    everyone = {a.node_id, b.node_id, c.node_id}
    for node in (a, b, c):
        wait_for(f"{node.ns} seeing both others",
                 lambda: {p["node"] for p in node.peers() if p["rtt_ms"] is not None} == everyone - {node.node_id},
                 timeout=20)
    discovered = time.monotonic() - t0
    print(f"all three discovered (and probed) each other {discovered:.2f} s after the first start")
    assert discovered < 5 + 3 * 1.5, "discovery should take at most 5 s once the agents run"   # start-up included

    data = os.urandom(3 << 20)
    src = tmp_path / "file.bin"
    src.write_bytes(data)
    cid = json.loads(a.hearth("add", "--json", str(src)))["cid"]
    out = tmp_path / "copy.bin"
    c.hearth("get", cid, "-o", str(out))
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert c.status()["fetched"]["blocks"] == 13   # 12 leaves and the root, each checked against its CID
    assert a.status()["served"]["blocks_served"] >= 13
    # every neighbour's throughput was probed (256 KiB over the namespaces' link) and shows in the table
    wait_for("throughput probes", lambda: all(p["throughput"] for p in c.peers()) and len(c.peers()) == 2,
             timeout=10)
    assert a.status()["served"]["probes"] >= 1
    text = c.hearth("status")   # what a person reads
    assert "fetched   13 blocks" in text and "cache " in text and "errors 0" in text, text
    table = c.hearth("peers")
    assert table.count("MB/s") == 2 and table.count("score") == 2 and "up " in table, table

    c.stop(signal.SIGKILL)   # no goodbye: the others must expire it
    for node in (a, b):
        wait_for(f"{node.ns} forgetting the dead node",
                 lambda: c.node_id not in {p["node"] for p in node.peers()}, timeout=15)
    # back after longer than the expiry: it announces the records the others' zeroconf still caches (no event
    # for them), so the others find it by still probing the neighbour they expired
    c.start()
    t0 = time.monotonic()
    for node in (a, b):
        wait_for(f"{node.ns} listing the node that came back",
                 lambda: any(p["node"] == c.node_id and p["rtt_ms"] is not None for p in node.peers()), timeout=30)
    back = sum(f"neighbour {c.node_id} is back at" in n.logs() for n in (a, b))
    print(f"the restarted node was listed again {time.monotonic() - t0:.1f} s after its start "
          f"({back} of 2 by probing it while dormant, the rest by a fresh mDNS event)")
    took = b.stop()
    assert took < 5.0 and b.proc.returncode == 0, b.logs()


def test_fleet_admits_certified_nodes_and_refuses_others(nodes, tmp_path):
    from edge.fleet.certificates import sign_certificate
    from edge.identity import Identity
    fleet = Identity.generate()
    members = [nodes(1), nodes(2)]
    outsider = nodes(3)
    for m in members:
        cert = os.path.join(m.data_dir, "fleet.cert")
        with open(cert, "wb") as f:
            f.write(sign_certificate(fleet, m.node_id))
        m.env.update({"HEARTH_ADMISSION": "fleet", "HEARTH_FLEET_KEY": fleet.node_id, "HEARTH_FLEET_CERT": cert})
    for node in (*members, outsider):
        node.start()
    a, b = members
    wait_for("members admitting each other",
             lambda: any(p["node"] == b.node_id and p["rtt_ms"] is not None for p in a.peers()), timeout=20)
    wait_for("the outsider being refused",
             lambda: a.status()["served"].get("refusals", 0) >= 1, timeout=20)
    assert "not admitted to the fleet" in a.logs()
    metrics_port = None
    for line in a.logs().splitlines():
        if "metrics at http://127.0.0.1:" in line:
            metrics_port = int(line.rsplit(":", 1)[1].split("/")[0])
    assert metrics_port
    from subprocess import run
    scraped = run(["ip", "netns", "exec", a.ns, "python3", "-c",
                   f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{metrics_port}/metrics')"
                   ".read().decode())"], capture_output=True, text=True).stdout
    refusals = [line for line in scraped.splitlines() if line.startswith("hearth_refusals_total ")]
    assert refusals and float(refusals[0].split()[1]) >= 1
    for name in ("hearth_errors_total ", "hearth_blocks_served_total ", "hearth_peers ", "hearth_block_cache_bytes "):
        assert any(line.startswith(name) for line in scraped.splitlines()), name
    wait_for("the outsider finding the fleet closed",
             lambda: all(p["rejected"] for p in outsider.peers() if p["node"] in (a.node_id, b.node_id))
             and len(outsider.peers()) >= 2, timeout=20)
    data = os.urandom(500_000)
    (tmp_path / "f").write_bytes(data)
    cid = json.loads(a.hearth("add", "--json", str(tmp_path / "f")))["cid"]
    b.hearth("get", cid, "-o", str(tmp_path / "member-copy"))
    assert (tmp_path / "member-copy").read_bytes() == data
    refused = outsider.run("get", cid, "-o", str(tmp_path / "outsider-copy"))
    assert refused.returncode == 1 and "no neighbour" in refused.stderr, refused.stderr
    assert not (tmp_path / "outsider-copy").exists()
