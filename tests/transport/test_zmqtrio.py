"""TrioSocket on real ZeroMQ sockets (loopback TCP): one task waits on the socket's edge-triggered descriptor
while others send and receive on it. A send or a receive can consume the edge the waiter needs; the waiter is
woken when what a task waits for is there (and only then), so no message is left unseen and no task hangs."""

import threading

import pytest
import trio
import trio.testing
import zmq

from edge.transport.zmqtrio import TrioSocket


def echo(router: zmq.Socket, count: int, go: threading.Event | None = None) -> None:
    """Answer count requests on a ROUTER, each with its own bytes (after go is set, if given)."""
    if go is not None:
        go.wait(10)
    for _ in range(count):
        route, body = router.recv_multipart()
        router.send_multipart([route, body])


@pytest.fixture
def pair():
    """(a TrioSocket DEALER, a plain ROUTER it is connected to) on loopback TCP."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield TrioSocket(dealer), router
    dealer.close(0)
    router.close(0)
    ctx.term()


@pytest.mark.trio
async def test_sends_while_a_receiver_waits_lose_no_reply(pair):
    """A receiving task waits on the descriptor while another task sends request after request; each send may
    process the commands that said a reply arrived. Every reply comes back, in order."""
    sock, router = pair
    count = 2000
    thread = threading.Thread(target=echo, args=(router, count), daemon=True)
    thread.start()
    got = []

    async def receive():
        while len(got) < count:
            got.append((await sock.recv_multipart())[0])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for i in range(count):
                await sock.send_multipart([i.to_bytes(4, "big")])
                if i % 7 == 0:
                    await trio.sleep(0)   # let the receiver take what has come and wait again
    thread.join(5)
    assert got == [i.to_bytes(4, "big") for i in range(count)]


@pytest.mark.trio
async def test_a_send_with_nothing_to_receive_does_not_wake_the_waiter(pair):
    """The waiter re-checks only when what it waits for is there: a request whose reply has not come leaves it
    asleep; the reply, when it comes, wakes it."""
    sock, router = pair
    go = threading.Event()
    thread = threading.Thread(target=echo, args=(router, 1, go), daemon=True)
    thread.start()
    got = []

    async def receive():
        got.append(await sock.recv_multipart())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            waiter = sock._waiter
            assert waiter is not None   # the receiver waits on the descriptor
            await sock.send_multipart([b"asked"])
            assert not waiter.cancel_called   # nothing to receive yet: the send did not wake it
            go.set()   # now the reply comes
    thread.join(5)
    assert got == [[b"asked"]]


@pytest.mark.trio
async def test_a_sender_held_by_a_full_queue_is_woken_while_another_task_waits_on_the_descriptor():
    """With the send queue full, a sender waits (behind the receiver, which holds the descriptor); when the peer
    drains the queue and answers, both go on: the sender's wish (room to send) is what wakes them, not only
    the receiver's."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.SNDHWM, 1)
    raw.setsockopt(zmq.SNDBUF, 4096)
    raw.connect(f"tcp://127.0.0.1:{port}")
    sock = TrioSocket(raw)
    count = 200
    go = threading.Event()
    thread = threading.Thread(target=echo, args=(router, count, go), daemon=True)
    thread.start()
    payload = bytes(64 * 1024)   # large enough that a few fill the socket buffers and the queue
    got = []

    async def receive():
        while len(got) < count:
            got.append(len((await sock.recv_multipart())[0]))

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()

                async def release():
                    await trio.sleep(0.3)   # the sender is held by now
                    go.set()
                nursery.start_soon(release)
                for _ in range(count):
                    await sock.send_multipart([payload])
        thread.join(5)
        assert got == [len(payload)] * count
    finally:
        raw.close(0)
        router.close(0)
        ctx.term()
