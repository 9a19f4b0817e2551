"""Issue 20 findings 2, 5, 8, 11 and 22 against a real gateway on loopback (the in-process server, as
tests/gateway/test_isolation.py runs it; finding 5 against two real agents): each test named for its finding,
each bounded, each asserting the status and message and that the next good request is still answered.

Run alone with `pytest -m attack`."""

import socket

import pytest
import trio

from edge.control import ask
from edge.store import Store
from edge.ipld.cid import parse_cid
from edge.transport import http as hhttp

from tests.gateway.faults import malformed_file
from tests.gateway.test_gateway import get, start
from tests.gateway.test_isolation import (connect_unix, partial_get, raw, serve_control_and_metrics,
                                         serve_four_slots)
from tests.gateway.test_neighbours import fetch, holding, neighbour_and

pytestmark = pytest.mark.attack

RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"     # SO_LINGER on, 0 s: close() sends an RST


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


@pytest.mark.trio
async def test_f02a_a_non_latin1_stream_name_does_not_crash_the_gateway(store):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(30):
            reply = await raw(port, b"GET /streams/%E2%82%AC HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 301"), reply[:200]
            assert b"location: /streams/%E2%82%AC/\r\n" in reply      # percent-encoded, never raw UTF-8
            status, _, body = await get(port, "/api/streams")
            assert status == 200 and body == b"[]"
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f02b_a_malformed_request_target_is_a_400(store):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(30):
            for target in (b"//[x", b"//[::1"):
                reply = await raw(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert reply.startswith(b"HTTP/1.1 400") and b"cannot be parsed" in reply, (target, reply[:200])
            assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f02c_a_malformed_unixfs_file_from_a_neighbour_never_crashes_the_agent(store):
    # hash-valid blocks as a neighbour would hand them over (each block matches its CID), stored here; the
    # file's leaf is not the size its parent lists
    bad_first, _ = malformed_file(store, first_ok=False)
    bad_second, prefix = malformed_file(store, first_ok=True)
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(60):
            for _ in range(2):           # stored: asked again, the same answer, not a crash
                status, _, body, _ = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{bad_first}")
                assert status == 502 and b"the content is malformed" in body, (status, body[:200])
                status, _, body, whole = await trio.to_thread.run_sync(partial_get, port, f"/ipfs/{bad_second}")
                assert status == 200 and not whole and body == prefix[:len(body)]   # cut short, never wrong bytes
            assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()


def test_f05_a_range_request_for_an_attackers_root_spends_a_budget_and_lands_in_the_cache(tmp_path):
    # a holds the "attacker's" 2 MiB files; b is the victim with a gateway and a 600 kB budget per client
    with holding(tmp_path) as a, neighbour_and(tmp_path, a, {"HEARTH_GATEWAY_FETCH_CLIENT": str(600_000)}) as \
            (b, gateway, files):
        (x, xcid), (y, ycid) = files
        status, _, body, _ = fetch(gateway, f"/ipfs/{xcid}", {"Range": "bytes=0-0"})
        assert status == 206 and body == x[:1]
        status, h, body, _ = fetch(gateway, f"/ipfs/{ycid}")
        assert status == 429 and int(h["retry-after"]) > 0 and b"fetched from neighbours" in body, (status, body)
        fetched = b.status()["fetched"]["bytes"]
        print(f"\nfetched for one Range: bytes=0-0 before the budget stopped it: {fetched} bytes")
        assert 0 < fetched < 2 << 20
        assert b.proc.poll() is None
        b.stop()
        root = parse_cid(xcid)
        with Store(b.data_dir) as s:
            assert s.has(root) and not s.is_pinned(root) and s.pinned_bytes() == 0   # cached, not kept
            held = s.used()
        assert held > 0
        freed = b.run("gc")                      # the cache is evictable: gc takes every fetched block
        assert freed.returncode == 0, freed.stderr
        with Store(b.data_dir) as s:
            assert s.used() == 0 and not s.has(root)
        print(f"cached then evicted: {held} bytes")


@pytest.mark.trio
async def test_f08_idle_gateway_connections_are_capped_and_timed_out(monkeypatch):
    monkeypatch.setattr(hhttp, "IDLE_TIMEOUT", 1.0)
    async with trio.open_nursery() as nursery:
        port = await serve_four_slots(nursery)
        with trio.fail_after(30):
            idle = [await trio.open_tcp_stream("127.0.0.1", port, local_address=f"127.0.0.{i}") for i in (1, 2, 3, 4)]
            await trio.sleep(0.2)
            # every slot held by a socket that sends nothing: the next is told so at once, not left hanging
            reply = await raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", local="127.0.0.5")
            assert reply.startswith(b"HTTP/1.1 503") and b"retry-after: " in reply, reply[:200]
            for s in idle:                       # the server closes the idle ones
                assert await s.receive_some(100) == b""
                await s.aclose()
            status, _, body = await get(port, "/")
            assert status == 200 and body == b"fine\n"
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f11_a_reset_connection_to_metrics_or_the_control_socket_ends_only_that_connection(tmp_path):
    async with trio.open_nursery() as nursery:
        path, port = await serve_control_and_metrics(nursery, tmp_path)

        def attack():
            for i in range(100):             # a request, then a reset before or while the answer goes out
                s = socket.socket(socket.AF_UNIX)
                connect_unix(s, path)
                s.sendall(b'{"cmd": "status"}\n')
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                s.close()
                t = socket.create_connection(("127.0.0.1", port), timeout=10)
                t.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                t.close()
            return ask(path, "status", timeout=10)
        with trio.fail_after(60):
            assert await trio.to_thread.run_sync(attack) == {"fine": True}
            status, _, body = await get(port, "/metrics")
            assert status == 200 and b"hearth_x 1" in body
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f22_a_request_head_over_16_kib_is_refused(store):
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(60))
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(30):
            reply = await raw(port, head + b"\r\n")            # 60 KB in one write
            assert reply.startswith(b"HTTP/1.1 431") and b"over 16384 bytes" in reply, reply[:200]
            stream = await trio.open_tcp_stream("127.0.0.1", port)     # and line by line
            async with stream:
                out = b""
                try:
                    for line in head.split(b"\r\n"):
                        await stream.send_all(line + b"\r\n")
                except trio.BrokenResourceError:
                    pass                          # the server answered and closed while we still sent
                with trio.move_on_after(5):
                    while chunk := await stream.receive_some(65536):
                        out += chunk
            assert out.startswith(b"HTTP/1.1 431"), out[:200]
            assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()
