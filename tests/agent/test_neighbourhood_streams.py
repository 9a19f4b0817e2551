"""Every node lists the neighbourhood's streams (issue 17, item 2): three agents in network namespaces (real mDNS,
CURVE, stores). A and C each publish a stream called film (and A a live one); B, which holds nothing, lists all
three, told apart by publisher, and serves each at /streams/NAME/ (or NAME@NODE; its player at /watch/NAME/),
fetching from the holders.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

import base64
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for
from tests.media.conftest import media  # noqa: F401 - the session fixture

why_not = can_use_netns()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")
PORT = 4800
GET = """
import base64, json, sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=60)
    status, headers, body = r.status, dict(r.headers), r.read()
except urllib.error.HTTPError as e:
    status, headers, body = e.code, dict(e.headers), e.read()
print(json.dumps({"status": status, "headers": {k.lower(): v for k, v in headers.items()},
                  "body": base64.b64encode(body).decode()}))
"""


def get(ns: str, host: str, path: str) -> tuple[int, dict, bytes]:
    """GET http://host:PORT/path from inside namespace ns."""
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", GET, f"http://{host}:{PORT}{path}"],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    return r["status"], r["headers"], base64.b64decode(r["body"])


@pytest.fixture(scope="module")
def hood(media, tmp_path_factory):   # noqa: F811
    tmp = tmp_path_factory.mktemp("hood")
    lan = Lan(3)
    nodes = []
    live = None
    try:
        env = {"HEARTH_GATEWAY_PORT": str(PORT)}
        a, b, c = (Node(lan.names[i], str(tmp / f"node{i}"), env) for i in range(3))
        nodes += [a, b, c]
        t0 = time.monotonic()
        for node, source in ((a, media["av"]), (c, media["audio"])):
            r = node.run("media", "import", source, "--name", "film", "--ladder", "240p", "--segment-seconds", "1",
                         "--preset", "ultrafast", "-q")
            assert r.returncode == 0, r.stderr
        print(f"\ntwo imports: {time.monotonic() - t0:.1f} s")
        for node in nodes:
            node.start()
        live = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", a.data_dir, "live", "publish", "testsrc",
                                 "--name", "cam", "--ladder", "240p", "--segment-seconds", "1", "--window", "4",
                                 "--preset", "ultrafast", "--no-record", "--duration", "40"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=a.env)
        yield lan, a, b, c
    finally:
        if live is not None:
            live.send_signal(signal.SIGINT)
            try:
                live.wait(20)
            except subprocess.TimeoutExpired:
                live.kill()
        for node in nodes:
            node.stop(signal.SIGKILL)
        lan.close()


def listing(lan, node_index) -> list[dict]:
    status, _, body = get(lan.names[node_index], "127.0.0.1", "/api/streams")
    assert status == 200
    return json.loads(body)


def test_b_lists_and_plays_its_neighbours_streams(hood):
    lan, a, b, c = hood
    t0 = time.monotonic()
    wait_for("B listing both films and the live cam",
             lambda: {(s["name"], s["publisher"]) for s in listing(lan, 1)} >=
             {("film", a.node_id), ("film", c.node_id), ("cam", a.node_id)}, timeout=40)
    print(f"B listed its neighbours' streams {time.monotonic() - t0:.1f} s after the agents started")
    streams = listing(lan, 1)
    films = {s["publisher"]: s for s in streams if s["name"] == "film"}
    assert films[a.node_id]["tracks"][0]["height"] == 240 and films[c.node_id]["tracks"][0]["kind"] == "audio"
    assert all(not s["local"] and s["held"][0] == s["publisher"] for s in streams)
    # A lists its own film with itself as publisher, and C's as C's
    mine = [s for s in listing(lan, 0) if s["name"] == "film"]
    assert {(s["publisher"], s["local"]) for s in mine} == {(a.node_id, True), (c.node_id, False)}

    ns = lan.names[1]
    film_a = f"/streams/film@{a.node_id}/"
    status, h, page = get(ns, "127.0.0.1", f"/watch/film@{a.node_id}/")   # the player's page for it
    assert status == 200 and b"player.js" in page
    status, h, master = get(ns, "127.0.0.1", film_a + "master.m3u8")
    assert status == 200 and b"240p/index.m3u8" in master, (status, master)
    t0 = time.monotonic()
    status, h, seg = get(ns, "127.0.0.1", film_a + "240p/00001.m4s")
    took = time.monotonic() - t0
    assert status == 200 and h["x-ipfs-path"].startswith(f"/ipfs/{films[a.node_id]['cid']}/")
    _, _, original = get(lan.names[0], "127.0.0.1", "/streams/film/240p/00001.m4s")
    assert seg == original and len(seg) > 1000
    print(f"a 240p segment ({len(seg)} bytes) from A through B's gateway: {took * 1000:.0f} ms (one HTTP GET, "
          f"a python start included)")
    status, _, audio_master = get(ns, "127.0.0.1", f"/streams/film@{c.node_id}/master.m3u8")
    assert status == 200 and b"240p" not in audio_master and b"audio" in audio_master
    # without a publisher: the nearest one's film (both are one hop away here)
    status, _, plain = get(ns, "127.0.0.1", "/streams/film/master.m3u8")
    assert status == 200 and plain in (master, audio_master)
    status, _, cids = get(ns, "127.0.0.1", film_a + "cids.json")
    assert status == 200 and "240p/00001.m4s" in json.loads(cids)
    assert get(ns, "127.0.0.1", "/streams/nosuch/master.m3u8")[0] == 404
    assert get(ns, "127.0.0.1", f"/streams/film@{b.node_id}/master.m3u8")[0] == 404
    assert b.status()["services"]["streams"]["refused"] == 0


def test_b_follows_a_live_stream_of_a(hood):
    lan, a, b, c = hood
    ns = lan.names[1]
    wait_for("the live stream listed on B", lambda: any(s["name"] == "cam" for s in listing(lan, 1)), timeout=40)
    first = None

    def has_segments():
        nonlocal first
        status, _, text = get(ns, "127.0.0.1", "/streams/cam/240p/index.m3u8")
        if status == 200 and b".m4s" in text:
            first = text
            return True
        return False
    wait_for("a live playlist with segments on B", has_segments, timeout=30)
    seq = lambda text: int(text.split(b"#EXT-X-MEDIA-SEQUENCE:")[1].split(b"\n")[0])   # noqa: E731
    last = [l for l in first.decode().splitlines() if l.endswith(".m4s")][-1]
    status, h, seg = get(ns, "127.0.0.1", f"/streams/cam/240p/{last}")
    assert status == 200 and len(seg) > 100 and h["x-ipfs-path"].startswith("/ipfs/")
    status, _, init = get(ns, "127.0.0.1", "/streams/cam/240p/init.mp4")
    assert status == 200 and b"ftyp" in init[:16]
    # asked of the publisher for each playlist: the window moves on B as it does on A
    wait_for("the live window moving on B",
             lambda: seq(get(ns, "127.0.0.1", "/streams/cam/240p/index.m3u8")[2]) > seq(first), timeout=20)
