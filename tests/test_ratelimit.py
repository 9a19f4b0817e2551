"""The upload limit: a byte-rate token bucket with debt, on a fake clock (no timing in tests), and the gateway
spending every body byte it sends through the node's one bucket."""

import pytest
import trio

from edge.ratelimit import ByteRate


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_within_the_burst_nothing_waits_then_debt_is_paid_at_the_rate():
    clock = Clock()
    r = ByteRate(1000, burst=500, clock=clock)
    assert r.debit(400) == 0
    assert r.debit(100) == 0                       # burst used up exactly
    assert r.debit(1000) == pytest.approx(1.0)     # 1000 bytes of debt at 1000 B/s
    assert r.debit(500) == pytest.approx(1.5)      # a second sender waits behind the first one's debt
    clock.now += 1.5                               # the debt is paid
    assert r.debit(0) == 0
    clock.now += 100                               # a quiet spell refills only up to the burst
    assert r.debit(500) == 0 and r.debit(1) > 0


def test_take_now_takes_only_what_may_go_at_once():
    clock = Clock()
    r = ByteRate(1000, burst=500, clock=clock)
    assert r.take_now(300) and not r.take_now(300)   # 200 left: refused, nothing taken
    assert r.take_now(200) and not r.take_now(1)
    assert r.debit(100) == pytest.approx(0.1)        # debt as usual afterwards
    clock.now += 1.0                                 # debt paid, the burst full again
    assert r.take_now(500) is True
    assert ByteRate(0).take_now(1 << 40)


def test_unlimited_never_waits_and_a_negative_rate_is_refused():
    r = ByteRate(0)
    assert all(r.debit(1 << 30) == 0 for _ in range(10))
    with pytest.raises(ValueError):
        ByteRate(-1)


def test_spend_sleeps_for_the_debt_on_trios_clock():
    async def main():
        clock = trio.lowlevel.current_clock()
        r = ByteRate(1_000_000, burst=100_000, clock=trio.current_time)
        t0 = trio.current_time()
        for _ in range(10):
            await r.spend(100_000)                 # 1 MB in all: 0.1 s burst, then 0.9 s of debt
        return trio.current_time() - t0, clock

    elapsed, _ = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert elapsed == pytest.approx(0.9, rel=1e-6)


class Counting(ByteRate):
    def __init__(self):
        super().__init__(0)
        self.spent = 0

    async def spend(self, n):
        self.spent += n


def test_the_gateway_spends_every_body_byte_through_the_upload_limit():
    from edge.transport.http import Response, serve_http
    body = bytes(range(256)) * 4096                          # 1 MiB, in chunks from an iterator

    async def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    async def handler(request):
        if request.target == "/bytes":
            return Response(200, {"content-type": "application/octet-stream"}, body[:1000])
        return Response(200, {"content-type": "application/octet-stream"}, chunks(), len(body))

    async def main():
        upload = Counting()
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(lambda task_status: serve_http(handler, 0, host="127.0.0.1", upload=upload,
                                                                       task_status=task_status))).port
            for path, size in (("/stream", len(body)), ("/bytes", 1000)):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
                got = b""
                while chunk := await stream.receive_some(1 << 16):
                    got += chunk
                await stream.aclose()
                assert got.endswith(body[:size])
            nursery.cancel_scope.cancel()
        return upload.spent

    assert trio.run(main) == len(body) + 1000
