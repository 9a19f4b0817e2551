"""Fault isolation in the gateway (issue 14 point 1, issue 20 findings 2, 5, 8, 11, 22): each kind of bad
content or bad request gets its status and one-line message, a body that fails after its headers is cut off
short (never wrong bytes), and the server goes on. Real sockets on loopback, real stores."""

import http.client
import json
import logging
import os
import socket
import time

import pytest
import trio

from edge.control import ask, serve_control
from edge.gateway import FetchBudget, Gateway
from edge.metrics import serve_metrics
from edge.service import Registry
from edge.store import Store, content
from edge.ipld.cid import CID
from edge.transport import http as hhttp
from edge.transport.http import Response, serve_http

from tests.gateway.faults import corrupt, leaves_held_by_no_one, malformed_file
from tests.gateway.test_gateway import get, start, webrtc_gateway

pytestmark = pytest.mark.trio


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


def add(store, tmp_path, data: bytes, name="f"):
    (tmp_path / name).write_bytes(data)
    return content.add(store, str(tmp_path / name)).cid


def leaves(store, root) -> list:
    return [cid for cid, _ in content.walk_blocks(store, root)][1:]


async def raw(port, data: bytes, local: str | None = None) -> bytes:
    """Send data from the local address given and read the reply until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


async def serve_four_slots(nursery) -> int:
    """An HTTP server in nursery that takes four connections at most and answers every request 200 "fine": its
    port."""
    async def handler(request):
        return Response.text(200, "fine")
    return (await nursery.start(lambda task_status: serve_http(handler, 0, host="127.0.0.1", max_connections=4,
                                                               task_status=task_status))).port


async def serve_control_and_metrics(nursery, tmp_path):
    """A control socket whose status is {"fine": True} and a metrics server with one gauge (hearth_x 1), started
    in nursery: (the control socket's path, the metrics port)."""
    path = str(tmp_path / "control.sock")

    async def status(request):
        return {"fine": True}
    await nursery.start(serve_control, path, {"status": status})
    registry = Registry()
    registry.gauge("x", "x").set(1)
    port = (await nursery.start(serve_metrics, 0, registry)).port
    return path, port


def connect_unix(s, path):
    """Connect, waiting while the listener's backlog is full (a Unix socket says EAGAIN then)."""
    for _ in range(500):
        try:
            return s.connect(path)
        except BlockingIOError:
            time.sleep(0.01)
    raise AssertionError("the control socket's backlog stayed full for 5 s")


def partial_get(port, path, headers=None, timeout=10):
    """(status, headers, the body as far as it came, whether it came whole)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    try:
        body, whole = r.read(), True
    except http.client.IncompleteRead as exc:
        body, whole = exc.partial, False
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body, whole


async def test_a_corrupt_block_is_a_502_before_the_headers_and_a_cut_off_body_after(store, tmp_path, caplog,
                                                                                    monkeypatch):
    monkeypatch.setattr(hhttp, "_CUT_LOG", hhttp._Limited())   # this test's cut-off is logged whatever came before
    data = os.urandom(5 * 256 * 1024)
    root = add(store, tmp_path, data)
    first, third = leaves(store, root)[0], leaves(store, root)[2]
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        corrupt(store, third)
        with caplog.at_level(logging.WARNING, "edge.transport.http"):
            status, h, body, whole = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{root}")
        # the headers went out with the first leaf; the third is corrupt: the body stops short of it
        assert status == 200 and int(h["content-length"]) == len(data)
        assert not whole and body == data[:len(body)] and len(body) <= 2 * 256 * 1024
        assert any("cut off after the headers [error " in r.getMessage() for r in caplog.records)
        # the corrupt block was quarantined: asked again, it is not here (this gateway has no neighbours)
        status, _, body, _ = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{root}")
        assert status == 200
        # chunked (CAR): cut off without the last chunk
        status, _, body, whole = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{root}?format=car")
        assert status == 200 and not whole
        corrupt(store, first)
        status, _, body, _ = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{root}")
        assert status == 502 and b"corrupt and was quarantined" in body
        status, _, body, _ = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{root}")
        assert status == 404 and b"not found" in body            # quarantined: not here any more
        assert (await get(port, "/api/streams"))[0] == 200        # the server goes on
        nursery.cancel_scope.cancel()


async def test_a_malformed_unixfs_file_is_a_502_or_a_cut_off_body_every_time(store):
    bad_first, _ = malformed_file(store, first_ok=False)
    bad_second, prefix = malformed_file(store, first_ok=True)
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        for _ in range(3):
            status, _, body, _ = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{bad_first}")
            assert status == 502 and b"the content is malformed" in body
            status, _, body, whole = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{bad_second}")
            assert status == 200 and not whole and body == prefix[:len(body)]
        nursery.cancel_scope.cancel()


async def test_blocks_held_by_no_one_and_names_under_a_file_are_404(store, tmp_path):
    root = leaves_held_by_no_one(store)
    file = add(store, tmp_path, b"just a file\n")
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        status, _, body = await get(port, f"/ipfs/{root}")
        assert status == 404 and b"not found" in body
        status, _, body = await get(port, f"/ipfs/{file}/under/it")   # the client's mistake, not bad content
        assert status == 404 and b"nothing under it" in body
        nursery.cancel_scope.cancel()


async def test_request_targets_and_heads_that_used_to_crash_or_pass(store, tmp_path):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        # finding 2a: a name that is not latin-1 in a Location header: percent-encoded
        reply = await raw(port, b"GET /streams/%E2%82%AC HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 301") and b"location: /streams/%E2%82%AC/\r\n" in reply
        # finding 2b: a target urlsplit cannot parse
        reply = await raw(port, b"GET //[x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400") and b"cannot be parsed" in reply
        # finding 22: a 60 KB head in one write (h11 alone checks only a head still incomplete)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(60))
        reply = await raw(port, head + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 431") and b"over 16384 bytes" in reply
        assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_a_handler_bug_is_a_500_with_an_id_that_is_in_the_log(caplog):
    async def handler(request):
        if request.path == "/bug":
            raise RuntimeError("a bug")
        if request.path == "/badheader":
            return Response(200, {"x-bad": "a\r\nb"}, b"x")
        if request.path in ("/long", "/short"):   # a body whose length is not the one declared

            async def body():
                yield b"a" * 10
                yield b"b" * 10
            return Response(200, {}, body(), length=15 if request.path == "/long" else 30)
        return Response.text(200, "fine")
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(lambda task_status: serve_http(handler, 0, host="127.0.0.1",
                                                                   task_status=task_status))).port
        with caplog.at_level(logging.ERROR, "edge.transport.http"):
            status, _, body = await get(port, "/bug")
        assert status == 500
        eid = body.split()[2].decode().rstrip(";")
        assert any(f"[error {eid}]" in r.getMessage() for r in caplog.records)
        status, h, body = await get(port, "/badheader")   # a CR LF in a header value is encoded, not sent
        assert status == 200 and h["x-bad"] == "a%0D%0Ab"
        # never a byte past the declared length, and a body that ends early is seen as cut off
        for path, sent in (("/long", b"a" * 10), ("/short", b"a" * 10 + b"b" * 10)):
            status, h, body, whole = await trio.to_thread.run_sync(partial_get, port, path)
            assert status == 200 and not whole and body == sent
        assert (await get(port, "/ok"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_past_the_connection_cap_a_quick_503_and_idle_sockets_are_closed(monkeypatch):
    monkeypatch.setattr(hhttp, "IDLE_TIMEOUT", 1.0)
    async with trio.open_nursery() as nursery:
        port = await serve_four_slots(nursery)
        # one address holds half the slots: past its share (a quarter), it is told 503; another is served
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.sleep(0.2)
        reply = await raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503") and b"retry-after: " in reply
        assert (await raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                          local="127.0.0.2")).startswith(b"HTTP/1.1 200")
        # every slot taken: anyone is told 503
        idle += [await trio.open_tcp_stream("127.0.0.1", port, local_address=f"127.0.0.{i}") for i in (3, 4)]
        await trio.sleep(0.2)
        reply = await raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", local="127.0.0.5")
        assert reply.startswith(b"HTTP/1.1 503") and b"retry-after: " in reply
        with trio.fail_after(5):     # the idle ones are closed by the server
            for s in idle:
                assert await s.receive_some(100) == b""
                await s.aclose()
        assert (await get(port, "/"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_a_spent_fetch_budget_is_a_429_and_draining_a_503(store):
    missing = CID.for_block(b"not here", 0x55)
    started = []

    def fetch_later(root):
        started.append(root)
        raise AssertionError("no fetch may start past the budget")

    async def fetch(root):
        raise AssertionError("unused")
    budget = FetchBudget(per_client=1000, total=10_000)
    budget.spend("127.0.0.1", 1000)
    draining = False
    gw = Gateway(store, fetch=fetch, fetch_later=fetch_later, budget=budget, draining=lambda: draining)
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(lambda task_status: serve_http(gw, 0, host="127.0.0.1",
                                                                   task_status=task_status))).port
        status, h, body = await get(port, f"/ipfs/{missing}")
        assert status == 429 and int(h["retry-after"]) > 0 and b"fetched from neighbours" in body
        assert started == []
        draining = True
        status, h, body = await get(port, "/api/streams")
        assert status == 503 and h["retry-after"] and b"stopping" in body
        nursery.cancel_scope.cancel()


async def test_the_fetch_budget_is_a_sliding_window_per_client_and_in_all():
    from edge.gateway import OverBudget
    now = [0.0]
    b = FetchBudget(per_client=100, total=150, window=600, clock=lambda: now[0])
    b.spend("a", 100)
    with pytest.raises(OverBudget) as exc:
        b.check("a")
    assert 0 < exc.value.retry_after <= 601
    b.check("b")
    b.spend("b", 60)
    with pytest.raises(OverBudget, match="gateway clients"):
        b.check("c")
    now[0] = 700.0        # the window has moved past both
    b.check("a")
    b.check("c")


async def test_webrtc_garbage_ends_that_request_only(store):
    async with webrtc_gateway(store) as (port, _):
        bodies = [b"", b"\xff\xfe\x00" * 100, b"v=0\r\n" * 1000, os.urandom(2000), b"m=application 9 x\r\n",
                  b"a=" + b"\x00" * 5000]
        for body in bodies:
            for ctype in (b"application/sdp", b"text/plain", b"application/sdp; charset=\xff"):
                reply = await raw(port, b"POST /webrtc HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype +
                                  b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                assert reply.split(b" ")[1] in (b"400", b"413", b"415", b"429", b"503"), reply[:200]
        reply = await raw(port, b"POST /webrtc HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                                b"Content-Length: 10000000\r\nConnection: close\r\n\r\n" + b"x" * 300_000)
        assert reply.startswith(b"HTTP/1.1 413")
        assert (await get(port, "/api/streams"))[0] == 200


async def test_control_and_metrics_clients_that_reset_or_send_garbage_end_their_own_connection(tmp_path):
    async with trio.open_nursery() as nursery:
        path, port = await serve_control_and_metrics(nursery, tmp_path)

        def attack():
            for i in range(200):
                s = socket.socket(socket.AF_UNIX)
                connect_unix(s, path)
                s.sendall([b"\xff\xfe garbage\n", b'{"cmd": "status"}\n', b"[1,2]\n", b'{"cmd": [1]}\n'][i % 4])
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()        # a reset, before or while the agent answers
                t = socket.create_connection(("127.0.0.1", port))
                t.sendall([b"GET /metrics HTTP/1.1\r\n\r\n", os.urandom(300), b"\r\n\r\n"][i % 3])
                t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                t.close()
            return ask(path, "status", timeout=10)
        assert await trio.to_thread.run_sync(attack) == {"fine": True}
        status, _, body = await get(port, "/metrics")
        assert status == 200 and b"hearth_x 1" in body
        with pytest.raises(ConnectionError, match="unknown request"):
            await trio.to_thread.run_sync(lambda: ask(path, "nosuch", timeout=10))
        nursery.cancel_scope.cancel()
