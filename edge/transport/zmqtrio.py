"""A ZeroMQ socket driven from Trio through its file descriptor.

The descriptor is edge-triggered and only says "ZMQ_EVENTS may have changed": always try the non-blocking
call first, wait only after zmq.Again, and decide on ZMQ_EVENTS. Trio allows one task waiting per descriptor,
so one task at a time waits on it and wakes the others (senders and receivers) when it returns.
"""

import trio
import zmq

POLL_SAFETY = 0.25   # re-check ZMQ_EVENTS at least this often, in case an edge was consumed elsewhere


class TrioSocket:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self._waiter_busy = False
        self._changed = trio.Event()
        self._send_lock = trio.Lock()

    async def _wait(self, flag: int) -> None:
        if self.sock.getsockopt(zmq.EVENTS) & flag:
            return
        if self._waiter_busy:
            await self._changed.wait()
            return
        self._waiter_busy = True
        try:
            with trio.move_on_after(POLL_SAFETY):
                await trio.lowlevel.wait_readable(self.fd)
        finally:
            self._waiter_busy = False
            self._changed.set()
            self._changed = trio.Event()

    async def recv_multipart(self, copy: bool = True):
        while True:
            try:
                return self.sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                await self._wait(zmq.POLLIN)

    async def send_multipart(self, frames, copy: bool = True) -> None:
        async with self._send_lock:   # frames of one message must not interleave with another's
            while True:
                try:
                    self.sock.send_multipart(frames, zmq.NOBLOCK, copy=copy)
                    return
                except zmq.Again:
                    await self._wait(zmq.POLLOUT)

    def close(self, linger: int = 0) -> None:
        self.sock.close(linger)
