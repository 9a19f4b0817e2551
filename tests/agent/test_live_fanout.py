"""Live as an agent service with PUB/SUB fan-out and relaying (issue 17, items 1 and 3): four agents in network
namespaces (real mDNS, CURVE, stores). `hearth live publish` hands a short test pattern to A's agent; headless
Chromium viewers on B, C and D each open their own node's gateway and play it. Printed: each viewer's playback
(time to play, media time against wall time, stalls), cut -> playable on the neighbours (p50, p99: the goal is
p99 <= 250 ms), A's upload with one viewing node and with three (the tree: A sends to one node, which relays), and
what scripted viewers (tests/agent/live_viewer.py, which time each segment) see when the relay is killed
mid-stream (stalls).

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2); the Chromium test also where
Debian's chromium is not installed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for
from tests.browser.chromium import CHROMIUM, Browser

why_not = can_use_netns()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")
PORT = 4810
SEGMENT = 1.0
AFTER = 10.0               # seconds the viewers go on after the relay is killed
VIEWER = os.path.join(os.path.dirname(__file__), "live_viewer.py")
# light browsers: three of them share two cores with four agents and the encoder
LIGHT = ["--window-size=320,240", "--disable-extensions", "--disable-renderer-backgrounding",
         "--disable-background-timer-throttling"]
MEDIA_TIME = "document.querySelector('video').currentTime"
# counts the video's stalls once it plays, by its media time: sampled every 100 ms, a sample in which it did not
# advance (the video not paused) is stalled time, and a run of such samples one stall. (Its 'waiting' events do
# not always have a 'playing' after them when it goes on, so they would not say how long it stood still.)
STALLS = """(() => { const v = document.querySelector('video');
  const s = window.stalls = {n: 0, ms: 0, last: v.currentTime, at: performance.now(), stuck: false};
  setInterval(() => { const now = performance.now();
    if (!v.paused && v.currentTime === s.last) { if (!s.stuck) s.n++; s.stuck = true; s.ms += now - s.at; }
    else s.stuck = false;
    s.last = v.currentTime; s.at = now; }, 100);
  return true; })()"""
STALLED = "JSON.stringify({n: stalls.n, ms: stalls.ms})"


def tx_bytes(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def viewer(node: Node, publisher: str, seconds: float) -> subprocess.Popen:
    base = f"http://127.0.0.1:{PORT}/streams/cam@{publisher}/240p/"
    return subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, VIEWER, base, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def seen(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    r = json.loads(out)
    return {int(k): v for k, v in r["segments"].items()}


def fanout(node: Node) -> dict:
    return node.status()["services"]["fanout"]


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))] if v else None


@pytest.fixture(scope="module")
def hood(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fanout")
    lan = Lan(4)
    nodes = []
    live = None
    try:
        env = {"HEARTH_GATEWAY_PORT": str(PORT), "HEARTH_LIVE_DIRECT": "1", "HEARTH_LIVE_RELAY": "2"}
        nodes = [Node(lan.names[i], str(tmp / f"node{i}"), env) for i in range(4)]
        for node in nodes:
            node.start()
        a = nodes[0]
        wait_for("every node knowing the other three", lambda: all(len(n.peers()) >= 3 for n in nodes), timeout=40)
        live = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", a.data_dir, "live", "publish", "testsrc",
                                 "--name", "cam", "--ladder", "240p", "--segment-seconds", str(SEGMENT), "--window",
                                 "6", "--preset", "ultrafast", "--no-record", "--duration", "150"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=a.env)
        wait_for("A's agent running the stream", lambda: any(
            s["name"] == "cam" and s["segments"].get("240p", 0) >= 2
            for s in a.status()["services"]["live"]["streams"]), timeout=40)
        assert live.poll() is None, live.communicate()
        # a player asks for the master playlist once: a node must list A's stream before its viewer opens it
        wait_for("B, C and D listing A's live stream", lambda: all(
            n.status()["services"]["streams"]["neighbours"] >= 1 for n in nodes[1:]), timeout=30)
        yield lan, nodes, live
    finally:
        if live is not None and live.poll() is None:
            live.send_signal(signal.SIGINT)
            try:
                live.wait(20)
            except subprocess.TimeoutExpired:
                live.kill()
        for node in nodes:
            node.stop(signal.SIGKILL)
        lan.close()


def watch(lan: Lan, node: Node, i: int, publisher: str) -> tuple[Browser, float]:
    """Chromium in node's namespace on its own gateway's player page for A's stream, once it plays: (the browser,
    seconds from opening the page to playing)."""
    browser = Browser(f"http://{lan.address(i + 1)}:{PORT}/streams/cam@{publisher}/",
                      prefix=["ip", "netns", "exec", node.ns], extra=LIGHT)
    t0 = time.monotonic()
    try:
        browser.wait_for(f"{MEDIA_TIME} > 0.3", timeout=40, what=f"live playback on {node.ns}")
        took = time.monotonic() - t0
        assert browser.evaluate(STALLS)
        assert browser.evaluate("window.hearth.hls.levels[0].details.live") is True
    except BaseException:
        browser.close()
        raise
    return browser, took


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_chromium_on_three_nodes_latency_and_upload(hood):
    lan, (a, b, c, d), live = hood
    browsers: dict[str, Browser] = {}
    try:
        # one viewing node
        t_open = time.monotonic()
        browsers[b.ns], took = watch(lan, b, 1, a.node_id)
        print(f"\n{b.ns}: Chromium playing {took:.1f} s after the page opened")
        time.sleep(max(0.0, 5 - (time.monotonic() - t_open)))   # past the agents' first hellos and B's start
        t0, x0 = time.monotonic(), tx_bytes(a.ns)
        time.sleep(6)
        one = (tx_bytes(a.ns) - x0) / (time.monotonic() - t0)
        # three viewing nodes, their browsers started one after another (two cores)
        for i, n in ((2, c), (3, d)):
            browsers[n.ns], took = watch(lan, n, i, a.node_id)
            print(f"{n.ns}: Chromium playing {took:.1f} s after the page opened")
        time.sleep(3)
        media0 = {ns: br.evaluate(MEDIA_TIME) for ns, br in browsers.items()}
        stalls0 = {ns: json.loads(br.evaluate(STALLED)) for ns, br in browsers.items()}
        t0, x0 = time.monotonic(), tx_bytes(a.ns)
        time.sleep(6)
        three = (tx_bytes(a.ns) - x0) / (time.monotonic() - t0)
        wall = time.monotonic() - t0
        for ns, br in browsers.items():
            advanced = br.evaluate(MEDIA_TIME) - media0[ns]
            s0, s1 = stalls0[ns], json.loads(br.evaluate(STALLED))
            stalled = (s1["ms"] - s0["ms"]) / 1000
            page = br.evaluate("JSON.stringify({t: hearth.transport, s: hearth.stats, e: hearth.errors})")
            print(f"{ns}: with three viewers, over {wall:.2f} s: media time +{advanced:.2f} s, playing "
                  f"{wall - stalled:.2f} s, {s1['n'] - s0['n']} stalls ({stalled:.2f} s); since it began playing "
                  f"{s1['n']} stalls ({s1['ms'] / 1000:.2f} s); page {page}")
            # it plays: media time goes on and the video stood still for less than the window (how long is printed)
            assert advanced > 1.0 and wall - stalled > 1.0, f"{ns}: the video does not play"
    finally:
        for br in browsers.values():
            br.close()
    print(f"A's upload: {one / 1000:.1f} kB/s with one viewing node, {three / 1000:.1f} kB/s with three "
          f"(ratio {three / one:.2f}; goal <= 1.5)")
    lat = [x for n in (b, c, d) for x in fanout(n)["cut_to_playable_ms"]]
    print(f"cut -> playable on a neighbour's gateway: p50 {pct(lat, 0.5)} ms, p99 {pct(lat, 0.99)} ms, "
          f"max {max(lat)} ms over {len(lat)} segments (goal p99 <= 250 ms)")
    sources = {n.node_id: fanout(n)["following"].get(f"cam@{a.node_id}", {}).get("source") for n in (b, c, d)}
    print(f"the tree: {sources}")
    switches = {n.ns: fanout(n)["following"].get(f"cam@{a.node_id}", {}).get("switches") for n in (b, c, d)}
    print(f"sources taken by each viewing node: {switches}; A's tree: {fanout(a)['publishing'].get('cam')}")
    assert all(sources.values()), f"a viewing node follows no source: {sources}"
    assert live.poll() is None


def test_relay_killed_mid_stream(hood):
    lan, (a, b, c, d), live = hood
    # viewers on the three (they form the tree if the test above did not run), ended AFTER seconds after the kill
    vs = {n.ns: viewer(n, a.node_id, 90) for n in (b, c, d)}
    time.sleep(5)
    # a node that follows A and relays to another: on a loaded machine a follower may be on its fallback (A) for
    # a few seconds after its relay was slow; it goes back at its next lease renewal (every 5 s)
    deadline = time.monotonic() + 20
    while True:
        sources = {n.node_id: fanout(n)["following"].get(f"cam@{a.node_id}", {}).get("source") for n in (b, c, d)}
        relays = [n for n in (b, c, d) if n.node_id in sources.values() and sources[n.node_id] == a.node_id]
        if relays or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert relays, f"no node relays: {sources}"
    relay = relays[0]
    others = [n for n in (b, c, d) if n is not relay]
    noted = {n.ns: len(n.logs()) for n in others}
    killed = time.time()
    relay.stop(signal.SIGKILL)
    vs[relay.ns].kill()
    vs[relay.ns].communicate()
    time.sleep(AFTER)
    for n in others:
        vs[n.ns].terminate()           # the viewer prints what it saw and ends
    for n in others:
        segs = seen(vs[n.ns])
        times = [segs[i][1] for i in sorted(segs)]
        after = [t for t in times if t > killed]
        assert len(after) >= 5, f"{n.ns}: {len(after)} segments in the {AFTER} s after the relay was killed"
        gaps = [b_ - a_ for a_, b_ in zip(times, times[1:]) if b_ > killed]
        stall = max(0.0, max(gaps, default=0.0) - SEGMENT)
        print(f"\n{n.ns}: {len(after)} segments after the relay was killed; first {after[0] - killed:.2f} s after, "
              f"longest gap {max(gaps, default=0):.2f} s (a stall of {stall:.2f} s beyond one segment)")
        follow = fanout(n)["following"][f"cam@{a.node_id}"]
        assert follow["source"] != relay.node_id, follow
        said = [line.split(" INFO ")[-1][:120] for line in n.logs()[noted[n.ns]:].splitlines()
                if "went silent" in line or "closed its connection" in line]
        print(f"{n.ns} after the kill: {said}")
    assert live.poll() is None
