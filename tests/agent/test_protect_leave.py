"""`hearth leave` among agents in network namespaces (issue 16): an owner and four holders on one bridge, real
mDNS, ZeroMQ with CURVE, stores and piece stores. A holder that leaves hands every piece it holds to another
holder (Transfer, the receipt checked), the owner hears of each (Moved) and publishes the next manifest version,
and the leaver says it is safe to unplug; the pin stays whole without any repair.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

import json
import os
import signal

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for

why_not = can_use_netns()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


def test_a_leaving_holder_hands_its_pieces_over_and_the_owner_follows(tmp_path):
    from edge.protection.owner import kept_manifests
    lan = Lan(5)
    owner = Node(lan.names[0], str(tmp_path / "owner"))
    holders = [Node(lan.names[i], str(tmp_path / f"h{i}"), {"HEARTH_SHARE": "64M"}) for i in range(1, 5)]
    everyone = [owner, *holders]
    try:
        for node in everyone:
            node.start()
        for node in everyone:
            wait_for("every node seeing its four neighbours",
                     lambda: len([p for p in node.peers() if p["rtt_ms"] is not None]) == 4, timeout=30)
        data = os.urandom(12 << 20)   # two segments
        (tmp_path / "file").write_bytes(data)
        cid = json.loads(owner.hearth("add", "--json", str(tmp_path / "file")))["cid"]
        done = json.loads(owner.hearth("pin", "add", "--json", "--protect", "auto", cid))["protected"]
        assert (done["k"], done["m"]) == (1, 1)   # N = 4: two whole copies, two spare nodes per segment
        held = {h.node_id: h.status()["services"]["pieces"] for h in holders}
        leaver = max(holders, key=lambda h: held[h.node_id]["pieces"])
        before = held[leaver.node_id]
        said = json.loads(leaver.hearth("leave", "--json"))
        print(f"\nleave: {said['moved']} of {said['pieces']} pieces, {said['bytes']} bytes moved for "
              f"{before['bytes']} bytes held ({said['bytes'] / before['bytes']:.2f}x) in {said['seconds']} s; "
              f"owners told {said['owners_told']}")
        assert said["safe"] and said["moved"] == before["pieces"] >= 1 and said["owners_told"] == said["moved"]
        assert said["bytes"] == before["bytes"]
        assert leaver.status()["services"]["pieces"]["pieces"] == 0
        wait_for("the owner's manifest to leave the leaver out",
                 lambda: leaver.node_id not in kept_manifests(owner.data_dir)[0].holders, timeout=30)
        [man] = kept_manifests(owner.data_dir)
        for s in range(len(man.segments)):
            assert len({man.holder_of(s, p) for p in range(man.n)}) == man.n
        leaver.stop(signal.SIGKILL)   # unplugged
        listed = json.loads(owner.hearth("pin", "ls", "--json"))
        [mine] = [p for p in listed if p["cid"] == cid]
        assert mine["protect"]["healthy"] == mine["protect"]["pieces"] == done["pieces"]
        text = leaver.run("leave").stderr   # the agent is gone: one line saying so
        assert "no agent is running" in text
    finally:
        for node in everyone:
            node.stop(signal.SIGKILL)
        lan.close()
