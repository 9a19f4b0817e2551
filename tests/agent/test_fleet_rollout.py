"""Staged rollouts over 10 devices (issue 18's acceptance): 10 real agents (`hearth run` with update_backend = test:
update.apply into a device simulated on files), each in a network namespace of its own, meet on a real mosquitto in
an eleventh, the operator's, which also serves the bundles over HTTP and runs every `hearth fleet rollout` command
as a process of its own ("a second shell"). Waves 10%, 50%, 100%; `status`, `halt` and `resume` from other
processes than the one that started the rollout; a failing bundle halts the rollout naming the devices that rolled
back; a hostile client on the broker changes nothing. The agents run only what a rollout needs (no mDNS, gateway,
metrics or back-off; a fleet region each, so they do not probe one another). Times are printed, never asserted."""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edge.control import ask
from edge.fleet.certificates import sign_certificate
from edge.fleet.rollouts import Rollout, certify_rollout_key, rollout_topic, sign_rollout, wave_of
from edge.identity import Identity
from tests.agent.netns import Lan, Node, can_use_netns, wait_for
from tests.fleet.broker import Mosquitto
from tests.test_update import make

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
DEVICES = 10
HTTP_PORT = 8000     # the bundles' server, in the operator's namespace
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# run in the operator's namespace: a plain paho client publishing retained messages (topic and hex payload per
# line on stdin), or printing the retained payload of one topic in hex
PUBLISH = """
import sys
import paho.mqtt.client as paho
client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="hostile", protocol=paho.MQTTv5)
client.connect(sys.argv[1], int(sys.argv[2]))
client.loop_start()
try:
    for line in sys.stdin.read().splitlines():
        topic, payload = line.split()
        client.publish(topic, bytes.fromhex(payload), qos=1, retain=True).wait_for_publish(5)
finally:
    client.loop_stop()
    client.disconnect()
"""
RETAINED = """
import sys
from tests.fleet.broker import retained
print(retained(int(sys.argv[2]), sys.argv[3], host=sys.argv[1])[sys.argv[3]].hex())
"""


class Device:
    """A device of the lab: a real agent in its namespace; what its rollout service did."""

    def __init__(self, node: Node):
        self.node, self.data_dir, self.node_id = node, node.data_dir, node.node_id

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
        return ask(os.path.join(self.data_dir, "control.sock"), "status", timeout=5)["services"]["rollouts"][
            "messages"]

    def alive(self) -> bool:
        return self.node.proc.poll() is None


class Operator:
    """The operator's namespace: commands run there as processes of their own."""

    def __init__(self, ns: str):
        self.ns = ns
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}

    def argv(self, *args) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def popen(self, *args) -> subprocess.Popen:
        """`hearth ARGS` started there, its output to read."""
        return subprocess.Popen(self.argv(sys.executable, "-m", "edge", *args), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env)

    def python(self, script: str, *args, input: str = "", timeout=30) -> str:
        return subprocess.run(self.argv(sys.executable, "-c", script, *args), input=input, capture_output=True,
                              text=True, check=True, env=self.env, timeout=timeout).stdout


def hearth(op: Operator, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
    r = subprocess.run(op.argv(sys.executable, "-m", "edge", *args), capture_output=True, text=True,
                       timeout=timeout, env=op.env)
    if check and r.returncode != 0:
        raise AssertionError(f"hearth {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def _listening(op: Operator, host: str, port: int) -> bool:
    return subprocess.run(op.argv("bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"), capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    why = can_use_netns()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("rollout")
    t0 = time.monotonic()
    lan = Lan(DEVICES + 1)
    op, here = Operator(lan.names[0]), lan.address(1)
    broker = http = None
    devices: list[Device] = []
    try:
        broker = Mosquitto(port=1883, host=here, netns=op.ns)
        fleet = Identity.generate()
        fleet.save(str(tmp / "fleet.key"))
        signer = Identity.generate()           # the update key devices trust (/etc/hearth/update-keys on an image)
        bundles = tmp / "www"
        bundles.mkdir()
        make(bundles, signer, version="2.0", board="test", name="good.bundle")
        make(bundles, signer, version="3.0", board="test", name="bad.bundle", extra={"test_trial": "fail"})
        http = subprocess.Popen(op.argv(sys.executable, "-m", "http.server", "--bind", here, "--directory",
                                        str(bundles), str(HTTP_PORT)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {"HEARTH_MDNS": "0", "HEARTH_METRICS_PORT": "0", "HEARTH_BACKOFF": "off",
               "HEARTH_FLEET_BROKER": broker.url, "HEARTH_FLEET_KEY": fleet.node_id, "HEARTH_ADMISSION": "fleet",
               "HEARTH_FLEET_CERT": "fleet.cert", "HEARTH_UPDATE_BACKEND": "test"}

        def device(i: int) -> Device:   # `hearth init`, its certificate and the update key it trusts
            node = Node(lan.names[i], str(tmp / f"device{i}"),
                        env={**env, "HEARTH_LISTEN": lan.address(i + 1), "HEARTH_FLEET_REGION": f"device{i}"})
            with open(os.path.join(node.data_dir, "fleet.cert"), "wb") as f:
                f.write(sign_certificate(fleet, node.node_id))
            os.makedirs(os.path.join(node.data_dir, "test-update"))
            with open(os.path.join(node.data_dir, "test-update", "update-keys"), "w") as f:
                f.write(signer.node_id + "\n")
            return Device(node)
        with concurrent.futures.ThreadPoolExecutor(DEVICES) as pool:
            devices = list(pool.map(device, range(1, DEVICES + 1)))
        for d in devices:                  # all ten start at once
            d.node.launch()
        for d in devices:
            d.node.ready(timeout=90)
        wait_for("the bundles' server listening", lambda: _listening(op, here, HTTP_PORT), 10)
        print(f"\n{DEVICES} agents in their namespaces started in {time.monotonic() - t0:.1f} s")
        hearth(op, "fleet", "rollout-key", "--key", str(tmp / "fleet.key"), "-o", str(tmp / "rollout.key"))
        yield {"broker": broker, "fleet": fleet, "devices": devices, "url": f"http://{here}:{HTTP_PORT}",
               "key": str(tmp / "rollout.key"), "op": op}
    finally:
        for d in devices:
            d.node.stop(signal.SIGKILL)
        if http is not None:
            http.kill()
            http.wait()
        if broker is not None:
            broker.close()
        lan.close()


def rollout_status(lab) -> dict:
    return json.loads(hearth(lab["op"], "fleet", "rollout", "status", "--broker", lab["broker"].url, "--fleet",
                             lab["fleet"].node_id, "--json").stdout)


def test_a_rollout_over_three_waves_halted_and_resumed_from_other_processes(lab):
    nodes, url, op = lab["devices"], lab["url"] + "/good.bundle", lab["op"]
    t0 = time.monotonic()
    first = op.popen("fleet", "rollout", url, "--broker", lab["broker"].url, "--key", lab["key"],
                     "--waves", "10%,50%,100%", "--halt-above", "20%", "--settle", "60")
    try:
        wait_for("every device reported on the rollout", lambda: all(n.outcome for n in nodes), 90)
        print(f"\nevery device reported {time.monotonic() - t0:.1f} s after the command")
        rid = nodes[0].state()["rollout"]
        r = Rollout(rid, 0, 0, url, bytes(32), "2.0", (1000, 5000, 10000), 2000)
        waves = {n.node_id: wave_of(r, n.node_id) for n in nodes}
        print(f"rollout {rid}: devices per wave {[list(waves.values()).count(i) for i in range(3)]}")
        first_wave = [n for n in nodes if waves[n.node_id] == 0]
        wait_for("the first wave healthy", lambda: all(n.outcome == "healthy" for n in first_wave), 60)
        print(f"wave 1 healthy {time.monotonic() - t0:.1f} s after the command")
        hearth(op, "fleet", "rollout", "halt", "--broker", lab["broker"].url, "--key", lab["key"])   # a second shell
        out, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    print(out)
    assert "HALTED" in out and first.returncode == 1
    halted = rollout_status(lab)
    assert halted["state"] == "halted" and halted["wave"] == 1 and halted["rollout"] == rid
    time.sleep(2)
    later = [n for n in nodes if waves[n.node_id] > 0]
    assert all(n.outcome == "waiting" and n.slot() == "a" for n in later), "a halted rollout installed"
    t1 = time.monotonic()
    resumed = op.popen("fleet", "rollout", "resume", "--broker", lab["broker"].url, "--key", lab["key"],
                       "--settle", "1")
    try:
        for wave in (1, 2):      # when each later wave was healthy on every device in it (polled, printed)
            members = [n for n in nodes if waves[n.node_id] == wave]
            wait_for(f"wave {wave + 1} healthy", lambda: all(n.outcome == "healthy" for n in members), 120)
            print(f"wave {wave + 1} ({len(members)} devices) healthy {time.monotonic() - t1:.1f} s after resume")
        out, _ = resumed.communicate(timeout=60)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait()
    print(out)
    print(f"resumed to done in {time.monotonic() - t1:.1f} s; {time.monotonic() - t0:.1f} s in all")
    assert "DONE" in out and resumed.returncode == 0
    assert all(n.outcome == "healthy" and n.slot() == "b" for n in nodes)
    done = rollout_status(lab)
    assert done["state"] == "done" and done["failed"] == [] and done["members"] == DEVICES
    text = hearth(op, "fleet", "rollout", "status", "--broker", lab["broker"].url, "--fleet",
                  lab["fleet"].node_id).stdout
    print(text)
    assert f"rollout {rid}: DONE" in text


def test_a_failing_bundle_halts_the_rollout_naming_the_devices_that_rolled_back(lab):
    nodes, op = lab["devices"], lab["op"]
    t0 = time.monotonic()
    r = hearth(op, "fleet", "rollout", lab["url"] + "/bad.bundle", "--broker", lab["broker"].url, "--key",
               lab["key"], "--waves", "10%,50%,100%", "--halt-above", "2%", "--settle", "1", check=False, timeout=120)
    print(f"\n{r.stdout}{r.stderr}halted {time.monotonic() - t0:.1f} s after the command")
    assert r.returncode == 1 and "HALTED" in r.stdout
    st = rollout_status(lab)
    back = {n.node_id for n in nodes if n.outcome == "rolled-back"}
    assert st["state"] == "halted" and back and set(st["failed"]) == back == set(st["rolled_back"])
    assert all(f"FAILED  {node}" in r.stdout for node in back)
    text = hearth(op, "fleet", "rollout", "status", "--broker", lab["broker"].url, "--fleet",
                  lab["fleet"].node_id).stdout
    print(text)
    assert "HALTED" in text and all(f"ROLLED-BACK  {node}  slot b: the trial boot of slot a failed" in text
                                    for node in back)
    assert all(n.slot() == "b" for n in nodes)          # every device still runs the good version
    untouched = [n for n in nodes if n.node_id not in back]
    assert all(n.outcome == "waiting" for n in untouched)   # (the waves later than the one that failed)


def test_a_hostile_client_publishing_forged_and_replayed_rollouts_changes_nothing(lab):
    nodes, fleet, op, broker = lab["devices"], lab["fleet"], lab["op"], lab["broker"]
    topic = rollout_topic(fleet.node_id)
    genuine = op.python(RETAINED, broker.host, str(broker.port), topic).strip()   # the halted rollout, as held
    before = [(n.outcome, n.slot()) for n in nodes]
    mallory = Identity.generate()
    now = time.time()
    forged = Rollout("feedfacefeedface", int(now * 1000) + 10**9, int(now), lab["url"] + "/bad.bundle", bytes(32),
                     "9.0", (10000,), 10000, key=certify_rollout_key(mallory, mallory.node_id, 30))
    stolen = Rollout("feedfacefeedface", int(now * 1000) + 10**9, int(now), lab["url"] + "/bad.bundle", bytes(32),
                     "9.0", (10000,), 10000, key=open(lab["key"] + ".cert", "rb").read())   # the real certificate
    counts = [n.counts() for n in nodes]
    messages = [(topic, sign_rollout(forged, mallory).hex()),    # its own "fleet" certified it
                (topic, sign_rollout(stolen, mallory).hex()),    # the real certificate, not its key
                (topic, genuine)]                                # the real record, replayed
    op.python(PUBLISH, broker.host, str(broker.port), input="".join(f"{t} {p}\n" for t, p in messages))
    wait_for("every device dropped all three", lambda: all(
        sum(v for k, v in n.counts().items() if k.startswith("dropped")) -
        sum(v for k, v in c.items() if k.startswith("dropped")) >= 3 for n, c in zip(nodes, counts)), 30)
    print(f"\nan agent's rollout messages: {nodes[0].counts()}")
    assert [(n.outcome, n.slot()) for n in nodes] == before
    assert all(n.alive() for n in nodes)
    op.python(PUBLISH, broker.host, str(broker.port), input=f"{topic} {genuine}\n")
