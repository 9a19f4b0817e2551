"""Issue 20 finding 21, leaks, kept fixed: on a router (a box that forwards packets) the agent listens, answers
mDNS and offers WebRTC candidates only on its LAN side, never on the interface holding the default route (its WAN
side); the mDNS TXT no longer carries free disk (the authenticated Welcome does); only /ipfs/ and stream files
are open to other origins (not /api/ or /webrtc); stream.json carries no source file name.

The router is staged for real: three network namespaces (the router, a LAN host, a WAN host) joined by veth
pairs, forwarding on in the router's namespace, its default route through the WAN side, a real agent in it and
real multicast. Bounded: fixed waits of a few seconds, every command with a timeout.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import pytest

from edge.netif import resolve
from tests.agent.netns import Node, can_use_netns, sh

pytestmark = pytest.mark.attack
HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = "zz-holiday-secret-f21"
GATEWAY, TRANSPORT = 4800, 4801
OFFER = "\r\n".join([   # a browser's data-channel offer, without candidates of its own
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sctp-port:5000",
    "a=ice-ufrag:hrth", "a=ice-pwd:hearthhearthhearthhearth",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", ""])


class Router:
    """Namespaces r (the router: lan0 10.S.1.1, wan0 10.S.2.1, default route via the WAN host, forwarding on),
    lan (10.S.1.2) and wan (10.S.2.2)."""

    def __init__(self):
        tag = f"{os.getpid() % 10000}"
        self.r, self.lan, self.wan = f"hr{tag}r", f"hr{tag}l", f"hr{tag}w"
        s = 10 + (os.getpid() + 77) % 200
        self.lan_ip, self.lan_host = f"10.{s}.1.1", f"10.{s}.1.2"
        self.wan_ip, self.wan_host = f"10.{s}.2.1", f"10.{s}.2.2"
        self.made: list[str] = []
        try:
            for ns in (self.r, self.lan, self.wan):
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            for side, ns, mine, theirs in (("lan0", self.lan, self.lan_ip, self.lan_host),
                                           ("wan0", self.wan, self.wan_ip, self.wan_host)):
                sh("ip", "-n", self.r, "link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", ns)
                sh("ip", "-n", self.r, "addr", "add", f"{mine}/24", "dev", side)
                sh("ip", "-n", self.r, "link", "set", side, "up")
                sh("ip", "-n", ns, "addr", "add", f"{theirs}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            sh("ip", "-n", self.r, "route", "add", "default", "via", self.wan_host, "dev", "wan0")
            sh("ip", "-n", self.r, "route", "add", "224.0.0.0/4", "dev", "lan0")
            sh("ip", "netns", "exec", self.r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        except BaseException:
            self.close()
            raise

    def python(self, ns: str, *args, timeout: float = 30) -> str:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, *args], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert r.returncode == 0, r.stderr
        return r.stdout

    def close(self):
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []


@pytest.fixture
def router():
    why = can_use_netns()
    if why:
        pytest.skip(why)
    r = Router()
    try:
        yield r
    finally:
        r.close()


HTTP = """
import http.client, json, sys
host, port, cid, offer = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {}
for method, path, body, headers in (("GET", "/api/streams", None, {}), ("GET", f"/ipfs/{cid}", None, {}),
                                    ("OPTIONS", "/api/streams", None, {}), ("OPTIONS", f"/ipfs/{cid}", None, {}),
                                    ("POST", "/webrtc", offer.encode(), {"content-type": "application/sdp"})):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request(method, path, body=body, headers={"origin": "http://evil.example", **headers})
    r = c.getresponse()
    out[f"{method} {path.split('/')[1]}"] = {"status": r.status, "cors": r.getheader("access-control-allow-origin"),
                                             "body": r.read().decode("utf-8", "replace")}
    c.close()
print(json.dumps(out))
"""

CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as exc:
    print("refused", exc)
"""


def test_f21_a_router_serves_announces_and_offers_ice_only_on_its_lan_side(router, tmp_path):
    r = Node(router.r, str(tmp_path / "r"), {"HEARTH_GATEWAY_PORT": str(GATEWAY), "HEARTH_METRICS_PORT": "0",
                                              "HEARTH_TRANSPORT_PORT": str(TRANSPORT)})
    (tmp_path / "f").write_bytes(b"public by design\n" * 100)
    cid = r.hearth("add", "-q", str(tmp_path / "f")).strip()
    neighbour = Node(router.lan, str(tmp_path / "l"), {"HEARTH_METRICS_PORT": "0"})
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        list(pool.map(Node.start, (r, neighbour)))   # side by side
        # the two mDNS hosts browse for a few seconds while the other checks run
        browse = os.path.join(HERE, "mdns_browse.py")
        lan_browse = pool.submit(router.python, router.lan, browse, router.lan_host, "4")
        wan_browse = pool.submit(router.python, router.wan, browse, router.wan_host, "4")
        # what it listens on: loopback and the LAN side, for the gateway and the transport alike
        ss = subprocess.run(["ip", "netns", "exec", router.r, "ss", "-ltnH"], capture_output=True, text=True,
                            timeout=10).stdout
        listening = {line.split()[3] for line in ss.splitlines() if line.strip()}
        print(f"\nthe router listens on: {sorted(listening)}")
        for port in (GATEWAY, TRANSPORT):
            mine = {a for a in listening if a.endswith(f":{port}")}
            assert mine == {f"127.0.0.1:{port}", f"{router.lan_ip}:{port}"}, mine
        # from the WAN side nothing answers; from the LAN side the gateway does
        for port in (GATEWAY, TRANSPORT):
            wan = router.python(router.wan, "-c", CONNECT, router.wan_ip, str(port))
            print(f"WAN host to {router.wan_ip}:{port}: {wan.strip()}")
            assert wan.startswith("refused")
        answers = json.loads(router.python(router.lan, "-c", HTTP, router.lan_ip, str(GATEWAY), cid, OFFER))
        print({k: (v["status"], v["cors"]) for k, v in answers.items()})
        assert answers["GET api"]["status"] == 200 and answers["GET api"]["cors"] is None
        assert answers["OPTIONS api"]["cors"] is None and answers["POST webrtc"]["cors"] is None
        assert answers["GET ipfs"]["status"] == 200 and answers["GET ipfs"]["cors"] == "*"
        assert answers["OPTIONS ipfs"]["cors"] == "*"
        # ICE: the answer's candidates are on the LAN side only
        sdp = answers["POST webrtc"]["body"]
        assert answers["POST webrtc"]["status"] == 201, sdp
        candidates = [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]
        print(f"ICE candidates offered: {candidates}")
        assert candidates == [router.lan_ip] and router.wan_ip not in sdp
        # mDNS: the LAN host reads a record with the LAN address only and no free disk; the WAN host reads nothing
        seen_lan = [json.loads(x) for x in lan_browse.result().splitlines() if x.startswith("{")]
        seen_wan = wan_browse.result()
        print(f"LAN host reads {seen_lan}\nWAN host reads {seen_wan.strip()!r}")
        ours = [x for x in seen_lan if x["txt"].get("id") == r.node_id]
        assert len(ours) == 1 and ours[0]["addresses"] == [router.lan_ip] and "free" not in ours[0]["txt"]
        assert seen_wan.strip() == "done"
        # the free disk travels in the Welcome instead: the neighbour's table has it once it said hello
        deadline, free = time.monotonic() + 30, 0
        while time.monotonic() < deadline and not free:
            free = next((p.get("free", 0) for p in neighbour.peers() if p["node"] == r.node_id), 0)
            time.sleep(0.5)
        print(f"the neighbour's table: the router has {free:,} bytes free")
        assert free > 0
        assert r.proc.poll() is None and neighbour.proc.poll() is None
    finally:
        pool.shutdown()
        r.stop()
        neighbour.stop()


def test_f21_listen_setting_resolves_interfaces_and_addresses():
    """The setting on a given host: auto leaves out the default route's interface only where packets are
    forwarded; explicit interfaces and addresses bind those; a name that is neither is one clear error."""
    from edge.config import ConfigError
    host = {"lo": ["127.0.0.1"], "br-lan": ["192.168.1.1"], "wan": ["203.0.113.7"], "wg0": ["10.9.0.1"]}
    routed = resolve("auto", interfaces=host, routed=True, wan={"wan"})
    assert routed.binds == ("127.0.0.1", "192.168.1.1", "10.9.0.1") and "203.0.113.7" not in routed.lan
    plain = resolve("auto", interfaces=host, routed=False, wan={"wan"})
    assert plain.binds == ("0.0.0.0",) and plain.every and "203.0.113.7" in plain.lan
    assert resolve("0.0.0.0", interfaces=host).every and resolve("all", interfaces=host).every
    assert resolve("127.0.0.1", interfaces=host).binds == ("127.0.0.1",)
    assert resolve("127.0.0.1", interfaces=host).lan == ()
    assert resolve("br-lan, 10.9.0.1", interfaces=host).binds == ("192.168.1.1", "10.9.0.1")
    with pytest.raises(ConfigError, match="'eth9' is neither an interface"):
        resolve("eth9", interfaces=host)


def test_f21_stream_json_carries_no_source_file_name(tmp_path):
    """A stream imported from a file whose path holds a marker: no block of the store holds it."""
    from edge.media import transcode as tc
    from edge.media import vod
    from edge.store import Store, content
    from tests.media.conftest import FFMPEG, ffmpeg
    if not FFMPEG:
        pytest.fail("ffmpeg is needed (Debian's ffmpeg package; `make test` installs it)")
    src = tmp_path / MARKER / f"{MARKER}.mp4"
    src.parent.mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "2", "-c:v", "libx264", "-preset",
           "ultrafast", "-pix_fmt", "yuv420p", str(src))
    with Store(str(tmp_path / "store")) as store:
        result = vod.import_file(store, str(src), name="film", ladder="180p",
                                 opts=tc.Options(seconds=1, preset="ultrafast"))
        manifest = json.loads(b"".join(content.cat(store, f"{result.cid}/stream.json")))
        print(f"\nstream.json source: {manifest['source']}")
        assert "path" not in manifest["source"] and MARKER not in json.dumps(manifest)
        held = [cid for cid, data in content.walk_blocks(store, result.cid) if MARKER.encode() in data]
        assert held == []
