"""The SD-wear budget (issue 19): an agent counts what it writes to its disk; once the day's budget is spent it
caches nothing more it fetches (a fetch ends with the budget's message, a gateway reader of content it lacks
gets 507) and it goes on serving what it holds, to browsers and to neighbours. Two agents on loopback."""

import json
import os
import urllib.error
import urllib.request

import pytest

from edge.control import ask
from tests.agent.netns import Node
from tests.agent.test_shutdown import free_port

BUDGET = 6 << 20


def test_once_the_wear_budget_is_spent_caching_stops_and_serving_goes_on(tmp_path):
    env = {"HEARTH_MDNS": "false", "HEARTH_METRICS_PORT": "0", "HEARTH_TRANSPORT_PORT": "0", "HEARTH_LISTEN": "127.0.0.1",
           "REQUIRE_NATIVE": "1"}
    a = Node(None, str(tmp_path / "a"), env)
    small, big, other = os.urandom(2 << 20), os.urandom(24 << 20), os.urandom(1 << 20)
    cids = {}
    for name, data in (("small", small), ("big", big), ("other", other)):
        (tmp_path / name).write_bytes(data)
        cids[name] = json.loads(a.hearth("add", "--json", str(tmp_path / name)))["cid"]
    nodes = []
    try:
        a.start()
        nodes.append(a)
        port = a.status()["endpoint"].rsplit(":", 1)[1]
        gateway = free_port()
        # B: the budget, and a LAN download cap so the big fetch lasts a few of the governor's ticks
        b = Node(None, str(tmp_path / "b"), {**env, "HEARTH_WEAR_BUDGET": str(BUDGET),
                                              "HEARTH_LAN_DOWNLOAD_LIMIT": "6M", "HEARTH_GATEWAY_PORT": str(gateway),
                                              "HEARTH_STATIC_PEERS": f"{a.node_id}@127.0.0.1:{port}"})
        b.start()
        nodes.append(b)
        sock = os.path.join(b.data_dir, "control.sock")
        ask(sock, "fetch", cid=cids["small"])                 # within the budget: cached
        with pytest.raises(ConnectionError, match="SD-wear budget"):
            ask(sock, "fetch", cid=cids["big"])               # the budget runs out on the way
        wear = b.status()["governor"]["wear"]
        assert wear["spent"] and wear["written_today"] >= BUDGET
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/ipfs/{cids['small']}", timeout=20) as r:
            assert r.read() == small                          # serving what it holds goes on
        with pytest.raises(urllib.error.HTTPError) as refused:   # content it lacks: not fetched today
            urllib.request.urlopen(f"http://127.0.0.1:{gateway}/ipfs/{cids['other']}", timeout=20)
        assert refused.value.code == 507 and b"caches nothing more today" in refused.value.read()
        stat = json.loads(b.hearth("store", "stat", "--json"))
        print(f"\nwear budget {BUDGET >> 20} MiB: written today {wear['written_today'] >> 20} MiB, the store holds "
              f"{stat['bytes'] >> 20} MiB ({len(small) >> 20} MiB file cached, the 24 MiB one stopped part-way)")
        assert stat["bytes"] < len(small) + len(big)
    finally:
        for node in nodes:
            node.stop()
