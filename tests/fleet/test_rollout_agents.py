"""Staged rollouts over 10 devices on a real mosquitto, bundles on a real HTTP server: 2 real agents (subprocesses
with update_backend = test: update.apply into a device simulated on files) and 8 light devices (the agent's own
rollout service in one process, tests/fleet/rollout_devices.py, so ten fit a small shared machine). Waves 10%,
50%, 100%; `status`, `halt` and `resume` from other processes than the one that started the rollout; a failing
bundle halts the rollout naming the devices that rolled back; a hostile client on the broker changes nothing.
Times are printed, never asserted."""

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest

from edge.control import ask
from edge.fleet.certificates import sign_certificate
from edge.fleet.rollouts import Rollout, certify_rollout_key, rollout_topic, sign_rollout, wave_of
from edge.identity import KEY_FILE, Identity
from tests.agent.netns import Node, wait_for
from tests.fleet.broker import Mosquitto, retained
from tests.test_update import make

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
AGENTS, LIGHT = 2, 8


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Device:
    """A device of the lab: a real agent (node set) or a light one; what its rollout service did."""

    def __init__(self, data_dir, node_id, node=None):
        self.data_dir, self.node_id, self.node = str(data_dir), node_id, node

    def state(self) -> dict:
        try:
            with open(os.path.join(self.data_dir, "rollout.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    @property
    def outcome(self) -> str:
        return self.state().get("outcome", "")

    def slot(self) -> str:
        path = os.path.join(self.data_dir, "test-update", "slot")
        return open(path).read() if os.path.exists(path) else "a"

    def counts(self) -> dict:
        if self.node is not None:
            return ask(os.path.join(self.data_dir, "control.sock"), "status", timeout=5)["services"]["rollouts"][
                "messages"]
        try:
            with open(os.path.join(self.data_dir, "rollout-counts.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def alive(self) -> bool:
        return self.node is None or self.node.proc.poll() is None


def hearth(*args, check=True, timeout=60) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"hearth {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    broker = Mosquitto()
    fleet = Identity.generate()
    fleet.save(str(tmp / "fleet.key"))
    signer = Identity.generate()           # the update key devices trust (/etc/hearth/update-keys on an image)
    bundles = tmp / "www"
    bundles.mkdir()
    make(bundles, signer, version="2.0", board="test", name="good.bundle")
    make(bundles, signer, version="3.0", board="test", name="bad.bundle", extra={"test_trial": "fail"})
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(bundles)))
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    env = {"HEARTH_MDNS": "0", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": "0",
           "HEARTH_METRICS_PORT": "0", "HEARTH_FLEET_BROKER": broker.url, "HEARTH_FLEET_KEY": fleet.node_id,
           "HEARTH_ADMISSION": "fleet", "HEARTH_FLEET_CERT": "fleet.cert", "HEARTH_UPDATE_BACKEND": "test"}

    def prepare(d, node_id):
        (d / "fleet.cert").write_bytes(sign_certificate(fleet, node_id))
        (d / "test-update").mkdir()
        (d / "test-update" / "update-keys").write_text(signer.node_id + "\n")

    t0 = time.monotonic()
    devices, light = [], None
    try:
        for i in range(AGENTS):
            node = Node(None, str(tmp / f"agent{i}"), env=env)
            prepare(tmp / f"agent{i}", node.node_id)
            devices.append(Device(tmp / f"agent{i}", node.node_id, node.start()))
        for i in range(LIGHT):
            d = tmp / f"light{i}"
            d.mkdir()
            key = Identity.generate()
            key.save(str(d / KEY_FILE))
            prepare(d, key.node_id)
            devices.append(Device(d, key.node_id))
        light = subprocess.Popen([sys.executable, "-m", "tests.fleet.rollout_devices", broker.url, fleet.node_id,
                                  *[d.data_dir for d in devices[AGENTS:]]], stdout=open(tmp / "light.log", "w"),
                                 stderr=subprocess.STDOUT)
        print(f"\n{AGENTS} agents and {LIGHT} light devices started in {time.monotonic() - t0:.1f} s")
        hearth("fleet", "rollout-key", "--key", str(tmp / "fleet.key"), "-o", str(tmp / "rollout.key"))
        url = f"http://127.0.0.1:{http_server.server_address[1]}"
        yield {"broker": broker, "fleet": fleet, "devices": devices, "url": url, "key": str(tmp / "rollout.key"),
               "light": light}
    finally:
        for d in devices:
            if d.node is not None:
                d.node.stop(signal.SIGKILL)
        if light is not None:
            light.kill()
            light.wait()
        http_server.shutdown()
        broker.close()


def rollout_status(lab) -> dict:
    return json.loads(hearth("fleet", "rollout", "status", "--broker", lab["broker"].url, "--fleet",
                             lab["fleet"].node_id, "--json").stdout)


def test_a_rollout_over_three_waves_halted_and_resumed_from_other_processes(lab):
    nodes, url = lab["devices"], lab["url"] + "/good.bundle"
    t0 = time.monotonic()
    first = subprocess.Popen([sys.executable, "-m", "edge", "fleet", "rollout", url, "--broker", lab["broker"].url,
                              "--key", lab["key"], "--waves", "10%,50%,100%", "--halt-above", "20%",
                              "--settle", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("every device reported on the rollout", lambda: all(n.outcome for n in nodes), 30)
        rid = nodes[0].state()["rollout"]
        r = Rollout(rid, 0, 0, url, bytes(32), "2.0", (1000, 5000, 10000), 2000)
        waves = {n.node_id: wave_of(r, n.node_id) for n in nodes}
        print(f"\nrollout {rid}: devices per wave {[list(waves.values()).count(i) for i in range(3)]}")
        first_wave = [n for n in nodes if waves[n.node_id] == 0]
        wait_for("the first wave healthy", lambda: all(n.outcome == "healthy" for n in first_wave), 30)
        print(f"wave 1 healthy {time.monotonic() - t0:.1f} s after the command")
        hearth("fleet", "rollout", "halt", "--broker", lab["broker"].url, "--key", lab["key"])   # a second process
        out, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    print(out)
    assert "HALTED" in out and first.returncode == 1
    halted = rollout_status(lab)
    assert halted["state"] == "halted" and halted["wave"] == 1 and halted["rollout"] == rid
    time.sleep(2)
    later = [n for n in nodes if waves[n.node_id] > 0]
    assert all(n.outcome == "waiting" and n.slot() == "a" for n in later), "a halted rollout installed"
    t1 = time.monotonic()
    resumed = hearth("fleet", "rollout", "resume", "--broker", lab["broker"].url, "--key", lab["key"],
                     "--settle", "1", timeout=90)
    print(resumed.stdout)
    print(f"resumed to done in {time.monotonic() - t1:.1f} s; {time.monotonic() - t0:.1f} s in all")
    assert "DONE" in resumed.stdout
    assert all(n.outcome == "healthy" and n.slot() == "b" for n in nodes)
    done = rollout_status(lab)
    assert done["state"] == "done" and done["failed"] == [] and done["members"] == AGENTS + LIGHT
    text = hearth("fleet", "rollout", "status", "--broker", lab["broker"].url, "--fleet", lab["fleet"].node_id).stdout
    print(text)
    assert f"rollout {rid}: DONE" in text


def test_a_failing_bundle_halts_the_rollout_naming_the_devices_that_rolled_back(lab):
    nodes = lab["devices"]
    t0 = time.monotonic()
    r = hearth("fleet", "rollout", lab["url"] + "/bad.bundle", "--broker", lab["broker"].url, "--key", lab["key"],
               "--waves", "10%,50%,100%", "--halt-above", "2%", "--settle", "1", check=False, timeout=90)
    print(f"\n{r.stdout}{r.stderr}halted {time.monotonic() - t0:.1f} s after the command")
    assert r.returncode == 1 and "HALTED" in r.stdout
    st = rollout_status(lab)
    back = {n.node_id for n in nodes if n.outcome == "rolled-back"}
    assert st["state"] == "halted" and back and set(st["failed"]) == back == set(st["rolled_back"])
    assert all(f"FAILED  {node}" in r.stdout for node in back)
    text = hearth("fleet", "rollout", "status", "--broker", lab["broker"].url, "--fleet", lab["fleet"].node_id).stdout
    print(text)
    assert "HALTED" in text and all(f"ROLLED-BACK  {node}  slot b: the trial boot of slot a failed" in text
                                    for node in back)
    assert all(n.slot() == "b" for n in nodes)          # every device still runs the good version
    untouched = [n for n in nodes if n.node_id not in back]
    assert all(n.outcome == "waiting" for n in untouched)   # (the waves later than the one that failed)


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


def test_a_hostile_client_publishing_forged_and_replayed_rollouts_changes_nothing(lab):
    nodes, fleet = lab["devices"], lab["fleet"]
    topic = rollout_topic(fleet.node_id)
    genuine = retained(lab["broker"].port, topic)[topic]            # the halted rollout, as the broker holds it
    before = [(n.outcome, n.slot()) for n in nodes]
    mallory = Identity.generate()
    now = time.time()
    forged = Rollout("feedfacefeedface", int(now * 1000) + 10**9, int(now), lab["url"] + "/bad.bundle", bytes(32),
                     "9.0", (10000,), 10000, key=certify_rollout_key(mallory, mallory.node_id, 30))
    stolen = Rollout("feedfacefeedface", int(now * 1000) + 10**9, int(now), lab["url"] + "/bad.bundle", bytes(32),
                     "9.0", (10000,), 10000, key=open(lab["key"] + ".cert", "rb").read())   # the real certificate
    counts = [n.counts() for n in nodes]
    _publish(lab["broker"].port, [(topic, sign_rollout(forged, mallory)),     # its own "fleet" certified it
                                  (topic, sign_rollout(stolen, mallory)),     # the real certificate, not its key
                                  (topic, genuine)])                          # the real record, replayed
    wait_for("every device dropped all three", lambda: all(
        sum(v for k, v in n.counts().items() if k.startswith("dropped")) -
        sum(v for k, v in c.items() if k.startswith("dropped")) >= 3 for n, c in zip(nodes, counts)), 20)
    print(f"\nan agent's rollout messages: {nodes[0].counts()}")
    assert [(n.outcome, n.slot()) for n in nodes] == before
    assert all(n.alive() for n in nodes) and lab["light"].poll() is None
    _publish(lab["broker"].port, [(topic, genuine)])
