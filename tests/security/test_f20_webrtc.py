"""Finding 20: WebRTC offers from anyone who can reach the gateway.

On 53df6de about 16 offers a minute kept the node at its session cap (sessions that never opened a data channel
lived for SESSION_IDLE, 300 s), and every candidate in an offer made the node send STUN checks to that
address, a third party's included. The live test stages both for real: a `hearth run` agent in one network
namespace, real aiortc peers in another (this file run as a module there, see peer_main), and a "third party"
address (198.51.100.7) held by the peers' namespace and routed to from the node's, listening for the STUN the
node must not send it.
"""

import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edge.transport.webrtc import MAX_CANDIDATES, client_address, filter_candidates

pytestmark = pytest.mark.attack

THIRD_PARTY = "198.51.100.7"          # TEST-NET-2: not on any of the node's networks
LAN_PORT = 4800


def offer(*candidates: str, end=True) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "m=application 9 DTLS/SCTP 5000",
             "c=IN IP4 0.0.0.0"]
    lines += [f"a=candidate:{i} 1 {c}" for i, c in enumerate(candidates, 1)]
    if end:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def kept(sdp: str) -> list[str]:
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


def test_f20_offer_candidates_filtered_before_aiortc():
    nets = [ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_network("fd00::/64")]
    client = client_address("::ffff:10.1.0.9")
    assert str(client) == "10.1.0.9"
    sdp, n_kept, n_dropped = filter_candidates(offer(
        "udp 2130706431 10.1.0.9 50000 typ host",              # the client itself
        "udp 2130706431 10.1.0.3 50000 typ host",              # the node's own LAN
        "udp 2130706431 fd00::9 50000 typ host",               # the node's own LAN, IPv6
        f"udp 2130706431 {THIRD_PARTY} 5000 typ host",         # a third party
        f"udp 1694498815 {THIRD_PARTY} 5001 typ srflx raddr 0.0.0.0 rport 0",
        "udp 2130706431 8c0a6f3e-1111-4222-8333-944445555666.local 50000 typ host",   # resolved by mDNS
        "udp 2130706431 victim.example 50000 typ host",        # resolved by DNS
        "udp 2130706431 224.0.0.251 5353 typ host",            # multicast
        "udp 2130706431 10.1.0.255 0 typ host",                # port 0
        "tcp 2130706431 10.1.0.3 9 typ host tcptype active",   # not UDP
        "udp 2130706431 127.0.0.1 50000 typ host",             # the node itself
        "udp garbage"), client, nets, public_ok=False)
    assert kept(sdp) == ["10.1.0.9", "10.1.0.3", "fd00::9"]
    assert (n_kept, n_dropped) == (3, 9)
    assert "a=end-of-candidates" not in sdp          # the node waits for the browser's own checks instead
    # with STUN/TURN servers configured, a public reflexive or relay candidate is what the operator wants
    sdp, _, _ = filter_candidates(offer("udp 1694498815 8.8.8.8 5001 typ srflx raddr 0.0.0.0 rport 0",
                                        "udp 2130706431 8.8.8.8 5002 typ host"), client, nets, public_ok=True)
    assert kept(sdp) == ["8.8.8.8"]
    # an offer with nothing dropped keeps its end-of-candidates; a long list is cut
    sdp, _, _ = filter_candidates(offer("udp 1 10.1.0.9 1 typ host"), client, nets, public_ok=False)
    assert "a=end-of-candidates" in sdp
    many = [f"udp 1 10.1.0.{i} 5000 typ host" for i in range(1, 100)]
    sdp, n_kept, n_dropped = filter_candidates(offer(*many), client, nets, public_ok=False)
    assert n_kept == MAX_CANDIDATES and n_dropped == 99 - MAX_CANDIDATES


def test_f20_sessions_capped_per_client_rate_limited_and_unopened_ones_expire():
    """The service alone, with real aiortc peer connections (offers carry no candidates: no packet is sent)."""
    import asyncio

    from aiortc import RTCConfiguration, RTCPeerConnection

    from edge.transport.webrtc import OFFER_BURST, SignalingError, WebRTCService

    async def main():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("blocks")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = "\r\n".join(line for line in pc.localDescription.sdp.splitlines()
                           if not line.startswith("a=candidate:") and line != "a=end-of-candidates") + "\r\n"
        await pc.close()
        service = WebRTCService(lambda cid: b"", max_sessions=3, max_per_client=2, open_within=1.0)

        async def offer(peer):
            try:
                await service.answer(sdp, peer)
                return 201
            except SignalingError as exc:
                return exc.status
        one = [await offer("10.1.0.9") for _ in range(OFFER_BURST + 2)]
        other = [await offer("::ffff:10.1.0.10") for _ in range(2)]
        print("one client:", one, "another:", other, service.refused)
        assert one[:2] == [201, 201] and set(one[2:OFFER_BURST]) == {503} and set(one[OFFER_BURST:]) == {429}
        assert other == [201, 503]                 # the cap in all (3) is reached
        assert len(service.sessions) == 3
        t0 = time.monotonic()
        while service.sessions and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.2)
        print(f"unopened sessions closed after {time.monotonic() - t0:.1f} s (open_within 1 s)")
        assert not service.sessions and service.refused["unopened"] == 3
        v6 = [await offer(f"fd00::{i}") for i in range(1, 4)]          # one /64 counts as one client
        print("one /64:", v6)
        assert v6 == [201, 201, 503]
        assert await offer("10.1.0.10") == 201      # the attack is over: another client is served again
        await service.close_all()
    asyncio.run(main())


# -- the live test: an agent and real aiortc peers in network namespaces ---------------------------------------

def _netns_reason():
    from tests.agent.netns import can_use_netns
    return can_use_netns()


@pytest.mark.skipif(_netns_reason() is not None, reason=str(_netns_reason()))
def test_f20_offer_flood_and_third_party_candidates(tmp_path):
    from tests.agent.netns import Lan, Node, sh
    lan = Lan(2)
    node = None
    try:
        # the third party: an address in the peers' namespace the node can reach but that is on none of its
        # networks (a route, not an interface address)
        sh("ip", "-n", lan.names[1], "addr", "add", f"{THIRD_PARTY}/32", "dev", "eth0")
        sh("ip", "-n", lan.names[0], "route", "add", "198.51.100.0/24", "dev", "eth0")
        node = Node(lan.names[0], str(tmp_path / "node"), {"HEARTH_GATEWAY_PORT": str(LAN_PORT),
                                                          "HEARTH_MDNS": "false"})
        block = os.urandom(50_000)
        path = tmp_path / "block.bin"
        path.write_bytes(block)
        cid = node.hearth("add", "-q", str(path)).strip()
        node.start()

        def sessions() -> int:
            out = subprocess.run(["ip", "netns", "exec", lan.names[0], sys.executable, "-c",
                                  "import urllib.request;print(urllib.request.urlopen("
                                  "'http://127.0.0.1:4802/metrics', timeout=5).read().decode())"],
                                 capture_output=True, text=True, timeout=30).stdout
            return int(float(next(l.split()[1] for l in out.splitlines() if l.startswith("hearth_webrtc_sessions "))))

        # run as a module from the checkout's root, so that `tests` imports however pytest was started
        peers = subprocess.Popen(["ip", "netns", "exec", lan.names[1], sys.executable, "-m",
                                  "tests.security.test_f20_webrtc", f"http://{lan.address(1)}:{LAN_PORT}", cid],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
                                 cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        # the peers' script prints one JSON line per step and waits on stdin between the flood and the end
        line = peers.stdout.readline()
        if not line:            # the peers' script ended early: its own error says why
            peers.kill()
            raise AssertionError(f"the peers' script printed nothing: {peers.communicate(timeout=10)[1][-3000:]}"
                                 f"\nthe agent's log: {node.logs()[-3000:]}")
        first = json.loads(line)
        print("hostile offer and flood:", first)
        assert first.get("hostile") == hashlib.sha256(block).hexdigest(), first   # still served, verified
        assert first.get("mdns_only") == hashlib.sha256(block).hexdigest(), first
        statuses = first["flood"]
        assert statuses.count(201) <= 4 and set(statuses) <= {201, 429, 503}, statuses
        assert statuses[-1] in (429, 503)
        # the sessions that never opened a data channel go (OPEN_WITHIN after their answer), the two open stay
        t0 = time.monotonic()
        counts = [sessions()]
        while counts[-1] > 2 and time.monotonic() - t0 < 90:
            time.sleep(1)
            counts.append(sessions())
        print(f"sessions after the flood: {counts[0]}, down to {counts[-1]} after {time.monotonic() - t0:.1f} s")
        assert counts[-1] <= 2
        time.sleep(1)                              # let a rate-limit token come back (one per OFFER_EVERY)
        os.kill(peers.pid, signal.SIGUSR1)         # go on: a well-behaved peer after the flood
        out, err = peers.communicate(timeout=90)
        last = json.loads(out.strip().splitlines()[-1])
        print("after the flood:", last)
        assert last["after"] == hashlib.sha256(block).hexdigest(), err[-2000:]
        assert last["third_party_datagrams"] == 0, "the node sent STUN to an address only an offer named"
        assert node.proc.poll() is None
    finally:
        if node:
            node.stop(signal.SIGTERM)
        lan.close()


# -- the peers, run in their own namespace ----------------------------------------------------------------------

def peer_main(base: str, cid: str) -> None:
    import asyncio
    import http.client
    import socket
    import threading
    import urllib.parse

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    heard = []

    def listen(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((THIRD_PARTY, port))
        while True:
            data, addr = s.recvfrom(2048)
            heard.append((port, addr, len(data)))
    for port in (5000, 5001):
        threading.Thread(target=listen, args=(port,), daemon=True).start()

    def post(sdp: str):
        u = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
        conn.request("POST", "/webrtc", body=sdp.encode(), headers={"content-type": "application/sdp"})
        r = conn.getresponse()
        out = (r.status, r.read().decode(), r.getheader("location"))
        conn.close()
        return out

    async def session(edit=None):
        """A real peer: offer, answer, data channel, one block fetched; the block's SHA-256."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        ch = pc.createDataChannel("blocks")
        opened = asyncio.Event()
        got: asyncio.Queue = asyncio.Queue()
        ch.on("open", opened.set)
        ch.on("message", got.put_nowait)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = edit(pc.localDescription.sdp) if edit else pc.localDescription.sdp
        status, body, _ = await asyncio.to_thread(post, sdp)
        if status != 201:
            await pc.close()
            return f"status {status}: {body.strip()}", None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await asyncio.wait_for(opened.wait(), 30)
        ch.send(json.dumps({"id": 1, "cid": cid}))
        head = json.loads(await asyncio.wait_for(got.get(), 20))
        data = b""
        while len(data) < head["size"]:
            data += (await asyncio.wait_for(got.get(), 20))[4:]
        return hashlib.sha256(data).hexdigest(), pc

    def hostile(sdp):
        return sdp + "".join(f"a=candidate:9{i} 1 udp 2130706431 {c}\r\n" for i, c in enumerate(
            [f"{THIRD_PARTY} 5000 typ host", f"{THIRD_PARTY} 5001 typ srflx raddr 0.0.0.0 rport 0",
             "victim.example 5000 typ host"]))

    def mdns_only(sdp):
        """Candidates as a browser hides them (mDNS names): the node drops them and still connects, by the
        peer's own checks (peer-reflexive)."""
        lines = [l for l in sdp.splitlines() if not l.startswith("a=candidate:") and l != "a=end-of-candidates"]
        return "\r\n".join(lines) + "\r\na=candidate:1 1 udp 2130706431 " \
            "8c0a6f3e-1111-4222-8333-944445555666.local 50000 typ host\r\n"

    async def patient(edit=None):
        """A session, tried once more (as a player would) if the channel or the block did not come in time: on
        2 shared cores under a full test run, aiortc on both ends once missed the node's 12 s window."""
        try:
            return await session(edit)
        except asyncio.TimeoutError:
            report["retried"] = report.get("retried", 0) + 1
            return await session(edit)

    report = {}

    async def main():
        keep = []
        report["hostile"], pc = await patient(hostile)
        keep.append(pc)
        report["mdns_only"], pc = await patient(mdns_only)
        keep.append(pc)
        # the flood: one address, offers as fast as it can; none of them ever connects
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("x")
        await pc.setLocalDescription(await pc.createOffer())
        report["flood"] = [(await asyncio.to_thread(post, pc.localDescription.sdp))[0] for _ in range(12)]
        await pc.close()
        go = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
        print(json.dumps(report), flush=True)
        await asyncio.wait_for(go.wait(), 120)
        after, pc = await patient()
        keep.append(pc)
        await asyncio.sleep(2)
        print(json.dumps({"after": after, "third_party_datagrams": len(heard), "heard": heard[:5]}), flush=True)
        for pc in keep:
            if pc is not None:
                await pc.close()
    asyncio.run(main())


if __name__ == "__main__":
    peer_main(sys.argv[1], sys.argv[2])
