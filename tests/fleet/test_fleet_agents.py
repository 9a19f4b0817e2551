"""Real agents (subprocesses, mDNS off) that meet only through a real mosquitto: they fetch from each other, a
hostile client on the broker changes nothing, a killed node's will clears its presence, a restarted broker sees
every node again, and `hearth fleet status` sums the fleet up. Times are printed, never asserted."""

import json
import os
import signal
import threading
import time

import paho.mqtt.client as paho
import pytest

from edge.fleet.records import Presence, presence_topic, serialize_record
from edge.identity import Identity
from edge.ipld import cbor
from tests.agent.netns import Node, wait_for
from tests.fleet.broker import Mosquitto, retained

TOPICS = "hearth/open/presence/default/+"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    broker = Mosquitto()
    env = {"HEARTH_MDNS": "0", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": "0",
           "HEARTH_METRICS_PORT": "0", "HEARTH_FLEET_BROKER": broker.url}
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(Node(None, str(tmp_path_factory.mktemp(name)), env=env).start())
        yield broker, nodes
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)
        broker.close()


def fleet_view(node) -> set:
    """What the peer table says of fleet neighbours (what must not change): node, source, addresses, port."""
    return {(p["node"], p["source"], tuple(sorted(p["addresses"])), p["port"]) for p in node.peers()}


def test_two_agents_meet_through_the_broker_and_fetch_from_each_other(fleet, tmp_path):
    broker, (a, b) = fleet
    t0 = time.monotonic()
    for me, other in ((a, b), (b, a)):
        wait_for(f"{other.node_id} listed by {me.node_id} as a fleet neighbour",
                 lambda: any(p["node"] == other.node_id and p["source"] == "fleet" and p["verified"]
                             for p in me.peers()), 30)
    print(f"\nboth nodes verified as fleet neighbours {time.monotonic() - t0:.1f} s after start")
    assert " fleet " in a.hearth("peers")
    for src, dst in ((b, a), (a, b)):
        data = os.urandom(3 << 20) + b"hearth"
        path = tmp_path / f"from-{src.node_id[:8]}"
        path.write_bytes(data)
        cid = json.loads(src.hearth("add", "--json", str(path)))["cid"]
        out = tmp_path / f"got-{dst.node_id[:8]}"
        dst.hearth("get", cid, "-o", str(out))
        assert out.read_bytes() == data
    assert "connected" in a.hearth("status")


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="hostile", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_hostile_client_on_the_broker_changes_nothing(fleet):
    broker, (a, b) = fleet
    wait_for("b verified by a", lambda: any(p["node"] == b.node_id and p["verified"] for p in a.peers()), 30)
    before = fleet_view(a)
    dropped_before = a.status()["services"]["fleet"]["messages"]
    held = retained(broker.port, TOPICS)
    b_topic = presence_topic("open", "default", b.node_id)
    mallory, victim = Identity.generate(), Identity.generate()
    now = int(time.time())
    signed = serialize_record(Presence(mallory.node_id, 10**13, now, "default", (("127.0.0.9", 4801),)), mallory)
    sig = cbor.loads(signed)["sig"]
    unsigned = signed.replace(sig, bytes(64))
    _publish(broker.port, [
        (presence_topic("open", "default", victim.node_id), signed),       # mallory's record as someone else's
        (presence_topic("open", "default", b.node_id), signed),           # ... as b's
        (presence_topic("open", "default", mallory.node_id), unsigned),   # a signature that fails
        (presence_topic("open", "default", victim.node_id), b"\xa1garbage" * 50),
        (presence_topic("open", "default", victim.node_id), os.urandom(5000)),   # over a record's bound
        (b_topic, held[b_topic]),                                          # b's own record, replayed
        (b_topic, b""),                                                    # b "cleared" by someone else
    ])
    time.sleep(2)   # the agent has handled them (it reads as they come)
    after = a.status()["services"]["fleet"]["messages"]
    print(f"\nbefore {dropped_before}\nafter  {after}")
    dropped = {k: after.get(k, 0) - dropped_before.get(k, 0) for k in after if k.startswith("dropped")}
    assert dropped.get("dropped: forged", 0) >= 2 and dropped.get("dropped: unsigned", 0) >= 1
    assert dropped.get("dropped: replayed", 0) >= 1 and sum(dropped.values()) >= 6
    assert fleet_view(a) == before and a.proc.poll() is None
    _publish(broker.port, [(t, b"") for t in (presence_topic("open", "default", victim.node_id),
                                              presence_topic("open", "default", mallory.node_id))])


def test_fleet_status_sums_up_the_fleet(fleet):
    broker, (a, b) = fleet
    r = a.run("fleet", "status", "--broker", broker.url, "--wait", "1.5", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["nodes"] == 2 and summary["reporting"] == 2 and summary["health"] == {"ok": 2}
    text = a.hearth("fleet", "status", "--broker", broker.url, "--wait", "1.5")
    print("\n" + text)
    assert "2 reporting" in text and "versions  0.1.0 2" in text


def test_a_restarted_broker_sees_every_node_again(fleet):
    broker, (a, b) = fleet
    wanted = {presence_topic("open", "default", n.node_id) for n in (a, b)}
    t0 = time.monotonic()
    broker.restart()   # no persistence: every retained record is gone with it
    wait_for("both nodes republished", lambda: wanted <= set(retained(broker.port, TOPICS, wait=0.3)), 60)
    print(f"\nbroker restarted: both nodes reconnected and republished after {time.monotonic() - t0:.1f} s")


def test_a_killed_node_is_cleared_by_its_will(fleet):
    broker, (a, b) = fleet
    topic = presence_topic("open", "default", b.node_id)
    wait_for("b's presence retained", lambda: topic in retained(broker.port, TOPICS, wait=0.3), 30)
    cleared = threading.Event()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    watcher.on_message = lambda c, u, m: cleared.set() if m.topic == topic and not m.payload else None
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe(topic, qos=1)
    watcher.loop_start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGKILL)
        assert cleared.wait(30), "the will did not clear b's presence"
        print(f"\nkill -9: b's presence cleared by its will after {time.monotonic() - t0:.2f} s")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    assert topic not in retained(broker.port, TOPICS, wait=0.3)
    wait_for("a sees b cleared", lambda: a.status()["services"]["fleet"]["messages"].get("cleared", 0) >= 1, 10)


def test_a_closed_fleet_meets_through_the_broker_and_refuses_the_uncertified(tmp_path):
    """admission = fleet: presence records carry the nodes' certificates; a record signed by its own node but
    without the fleet's certificate is dropped."""
    from edge.fleet.certificates import sign_certificate
    fleet_key = Identity.generate()
    broker = Mosquitto()
    env = {"HEARTH_MDNS": "0", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": "0",
           "HEARTH_METRICS_PORT": "0", "HEARTH_FLEET_BROKER": broker.url, "HEARTH_FLEET_REGION": "closed"}
    nodes = []
    try:
        for name in ("c", "d"):
            node = Node(None, str(tmp_path / name), env=env)
            (tmp_path / name / "fleet.cert").write_bytes(sign_certificate(fleet_key, node.node_id))
            node.env.update(HEARTH_ADMISSION="fleet", HEARTH_FLEET_KEY=fleet_key.node_id,
                            HEARTH_FLEET_CERT="fleet.cert")
            nodes.append(node.start())
        c, d = nodes
        wait_for("c and d verified as fleet neighbours", lambda: any(
            p["node"] == d.node_id and p["source"] == "fleet" and p["verified"] for p in c.peers()), 30)
        before = fleet_view(c)
        outsider = Identity.generate()
        record = Presence(outsider.node_id, 1, int(time.time()), "closed", (("127.0.0.9", 4801),))
        _publish(broker.port, [(presence_topic(fleet_key.node_id, "closed", outsider.node_id),
                                serialize_record(record, outsider))])
        wait_for("the outsider's record dropped",
                 lambda: c.status()["services"]["fleet"]["messages"].get("dropped: not certified", 0) >= 1, 10)
        assert fleet_view(c) == before
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)
        broker.close()
