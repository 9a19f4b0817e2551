"""The HTTP gateway over a real socket: streams, files with ranges, trustless raw and CAR, bad requests."""

import http.client
import io
import json
import os
from contextlib import asynccontextmanager

import pytest
import trio

from edge.gateway import Gateway
from edge.media import transcode as tc
from edge.media import vod
from edge.store import Store, content
from edge.ipld.car import read_car
from edge.ipld.cid import CID
from edge.transport.http import serve_http

from tests.media.conftest import media  # noqa: F401 - the session fixture

pytestmark = pytest.mark.trio


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


def request(port, method, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


async def get(port, path, headers=None, method="GET"):
    return await trio.to_thread.run_sync(request, port, method, path, headers)


async def raw(port, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.move_on_after(5):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                out += chunk
    return out


async def start(nursery, store, web_dir=None):
    gw = Gateway(store, **({"web_dir": web_dir} if web_dir else {}))
    port = (await nursery.start(lambda task_status: serve_http(gw, 0, host="127.0.0.1", task_status=task_status))).port
    return gw, port


@asynccontextmanager
async def webrtc_gateway(store):
    """A gateway with WebRTC signaling on loopback, served until the block ends: (port, the WebRTC service)."""
    from edge.bridge import AsyncioBridge
    from edge.transport.webrtc import WebRTCService
    bridge = AsyncioBridge()
    service = WebRTCService(store.get)
    try:
        async with trio.open_nursery() as nursery:
            gw = Gateway(store, webrtc=(bridge, service))
            port = (await nursery.start(lambda task_status: serve_http(gw, 0, host="127.0.0.1",
                                                                       task_status=task_status))).port
            yield port, service
            nursery.cancel_scope.cancel()
    finally:
        bridge.close()


async def test_stream_files_ranges_and_cache_headers(media, store, tmp_path):   # noqa: F811
    result = vod.import_file(store, media["av"], name="demo", ladder="240p",
                             opts=tc.Options(seconds=2, preset="ultrafast"))
    out = tmp_path / "x"
    content.get(store, str(result.cid), str(out))
    async with trio.open_nursery() as nursery:
        gw, port = await start(nursery, store)
        status, h, body = await get(port, "/api/streams")
        listed = json.loads(body)
        assert status == 200 and listed[0]["name"] == "demo" and listed[0]["cid"] == str(result.cid)
        status, h, body = await get(port, "/streams/demo/master.m3u8")
        assert status == 200 and h["content-type"] == "application/vnd.apple.mpegurl"
        assert body == (out / "master.m3u8").read_bytes() and h["x-ipfs-path"].startswith(f"/ipfs/{result.cid}/")
        seg = (out / "240p" / "00001.m4s").read_bytes()
        status, h, body = await get(port, "/streams/demo/240p/00001.m4s")
        assert status == 200 and body == seg and h["content-type"] == "video/iso.segment"
        assert h["accept-ranges"] == "bytes" and "max-age" in h["cache-control"]
        status, h, body = await get(port, "/streams/demo/240p/00001.m4s", {"Range": "bytes=100-1099"})
        assert status == 206 and body == seg[100:1100] and h["content-range"] == f"bytes 100-1099/{len(seg)}"
        status, h, body = await get(port, "/streams/demo/240p/00001.m4s", {"Range": "bytes=-10"})
        assert status == 206 and body == seg[-10:]
        status, h, body = await get(port, "/streams/demo/240p/00001.m4s", {"Range": f"bytes={len(seg)}-"})
        assert status == 416
        status, h, body = await get(port, "/streams/demo/240p/00001.m4s", method="HEAD")
        assert status == 200 and body == b"" and int(h["content-length"]) == len(seg)
        # by CID: immutable, with an ETag that answers a revalidation with 304
        status, h, body = await get(port, f"/ipfs/{result.cid}/240p/00001.m4s")
        assert status == 200 and body == seg and "immutable" in h["cache-control"]
        status, _, _ = await get(port, f"/ipfs/{result.cid}/240p/00001.m4s", {"If-None-Match": h["etag"]})
        assert status == 304
        status, h, body = await get(port, f"/ipfs/{result.cid}/")
        assert status == 200 and {e["name"] for e in json.loads(body)} >= {"master.m3u8", "240p", "audio"}
        status, _, body = await get(port, "/streams/nope/master.m3u8")
        assert status == 404 and b"no stream named" in body
        status, h, body = await get(port, "/streams/demo/")   # the player's page moved to /watch/NAME/
        assert status == 301 and h["location"] == "/watch/demo/"
        status, _, body = await get(port, "/watch/demo/")
        assert status == 200 and b"hls.min.js" in body
        status, h, _ = await get(port, "/watch/demo")
        assert status == 301 and h["location"] == "/watch/demo/"
        status, _, body = await get(port, "/watch/")
        assert status == 200 and b"hls.min.js" in body
        nursery.cancel_scope.cancel()


async def test_trustless_raw_and_car(store, tmp_path):
    src = tmp_path / "dir"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "big.bin").write_bytes(os.urandom(700_000))
    (src / "a.txt").write_text("hello\n")
    root = content.add(store, str(src)).cid
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        status, h, body = await get(port, f"/ipfs/{root}?format=raw")
        assert status == 200 and h["content-type"] == "application/vnd.ipld.raw"
        assert CID.for_block(body, root.codec) == root.to_v1()
        status, h, body = await get(port, f"/ipfs/{root}", {"Accept": "application/vnd.ipld.car"})
        assert status == 200 and h["content-type"].startswith("application/vnd.ipld.car")
        records = read_car(io.BytesIO(body))
        header = next(records)
        blocks = list(records)     # read_car checks each block against its CID
        assert list(header.roots) == [root] and len(blocks) == len(list(content.walk_blocks(store, root)))
        status, _, body = await get(port, f"/ipfs/{root}/sub/big.bin?format=car")
        blocks = list(read_car(io.BytesIO(body)))[1:]
        assert blocks[0][0] == root and len(blocks) >= 5     # the path's blocks, then the file's
        status, h, body = await get(port, f"/ipfs/{root}/a.txt")
        assert body == b"hello\n" and h["content-type"].startswith("text/plain")
        status, _, body = await get(port, "/ipfs/bafynotacid")
        assert status == 400 and b"not a CID" in body
        missing = CID.for_block(b"never stored", 0x55)
        status, _, body = await get(port, f"/ipfs/{missing}")
        assert status == 404
        status, _, body = await get(port, f"/ipfs/{root}/no/such")
        assert status == 404
        nursery.cancel_scope.cancel()


async def test_bad_requests_do_not_stop_the_server(store, tmp_path):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        assert (await raw(port, b"\x16\x03\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        reply = await raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 431")
        reply = await raw(port, b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.split(b" ")[1] in (b"400", b"404")
        reply = await raw(port, b"POST /api/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                b"Connection: close\r\n\r\nabc")
        assert reply.startswith(b"HTTP/1.1 405")
        reply = await raw(port, b"GET /player/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.split(b" ")[1] == b"404"
        # a connection that stalls mid-request does not stop others from being served
        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        await stalled.send_all(b"GET /api/streams HTTP/1.1\r\nHo")
        status, _, body = await get(port, "/api/streams")
        assert status == 200 and json.loads(body) == []
        await stalled.aclose()
        nursery.cancel_scope.cancel()


async def test_webrtc_signaling_refuses_bad_offers(store):
    async with webrtc_gateway(store) as (port, service):

        def post(body, ctype="application/sdp"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/webrtc", body=body, headers={"content-type": ctype})
            r = conn.getresponse()
            out = (r.status, r.read())
            conn.close()
            return out
        assert (await trio.to_thread.run_sync(post, "v=0", "text/plain"))[0] == 415
        status, body = await trio.to_thread.run_sync(post, "v=0\r\nm=audio 9 RTP/AVP 0\r\n")
        assert status == 400 and b"no data channel" in body
        status, body = await trio.to_thread.run_sync(post, "m=application garbage\r\n" * 10)
        assert status == 400 and b"cannot be used" in body
        status, body = await trio.to_thread.run_sync(post, "m=application " + "x" * 70_000)
        assert status == 413
        status, _, body = await get(port, "/webrtc")
        assert status == 405
        status, _, _ = await get(port, "/webrtc/nosuchsession", method="DELETE")
        assert status == 404
        assert service.sessions == {}
