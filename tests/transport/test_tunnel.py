"""The WebRTC tunnel's two ends on one asyncio loop (real aiortc, real sockets on this host): a server that
greets first (as ZeroMQ does) is heard through the channel before the client writes, bytes pass both ways
byte-exact, a second connection gets a channel of its own in the same session, and bad offers are refused.
The NAT lab (tests/agent/test_nat_lab.py) runs it between homes through the broker, with coturn."""

import asyncio
import os
import time

import pytest

from edge.fleet.signal import new_sid
from edge.transport.tunnel import TunnelError, Tunnels
from edge.transport.webrtc import ice_server


def test_ice_servers_with_and_without_credentials():
    stun = ice_server("stun:198.51.100.1:3478")
    assert stun.urls == "stun:198.51.100.1:3478" and stun.username is None
    turn = ice_server("turn:hearth:s3cret@turn.example:3478?transport=udp")
    assert (turn.urls, turn.username, turn.credential) == ("turn:turn.example:3478?transport=udp", "hearth",
                                                           "s3cret")


async def _through_a_tunnel():
    async def transport(reader, writer):   # greets at once, then answers each chunk upper-cased
        writer.write(b"GREETING")
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(transport, "127.0.0.1", 0)
    serving = Tunnels([], ("127.0.0.1", server.sockets[0].getsockname()[1]))
    dialling = Tunnels([], ("127.0.0.1", 1))
    try:
        with pytest.raises(TunnelError, match="no data channel"):
            await serving.answer(new_sid(), "nobody", "v=0\r\n")
        sid = new_sid()
        offer = await dialling.offer(sid, "server-node")
        answer = await serving.answer(sid, "client-node", offer)
        port = await dialling.connect(sid, answer)
        assert dialling.endpoint("server-node") == port and dialling.endpoint("someone-else") == 0
        figures = []
        for _ in range(2):   # the channel made with the offer, then one made for the second connection
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.readexactly(8), 10) == b"GREETING"
            data = os.urandom(1 << 20).replace(b"\x00", b"a")
            t = time.monotonic()
            writer.write(data)
            got = await asyncio.wait_for(reader.readexactly(len(data)), 60)
            figures.append(len(data) / (time.monotonic() - t) / 1e6)
            assert got == data.upper()
            writer.close()
        assert serving.sessions[sid].channels == 2 and dialling.counts["dialled"] == 1
        return figures
    finally:
        await dialling.close_all()
        await serving.close_all()
        server.close()


def test_bytes_pass_both_ways_through_a_tunnel():
    figures = asyncio.run(_through_a_tunnel())
    print("\n1 MiB there and back through the tunnel (one host): " +
          ", ".join(f"{f:.1f} MB/s" for f in figures))
