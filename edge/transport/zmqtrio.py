"""A ZeroMQ socket driven from Trio through its file descriptor.

The descriptor is edge-triggered and only says "ZMQ_EVENTS may have changed": decide on ZMQ_EVENTS, and wait
on the descriptor only when it says the event is not there. Trio allows one task waiting per descriptor, so
one task at a time waits on it and wakes the others (senders and receivers) when it returns. Any send or
receive by another task may consume the descriptor's edge, so after each one ZMQ_EVENTS is read again and the
waiter woken if what a task waits for is there now; if it is not, a later change signals the descriptor
(pyzmq's own asyncio socket re-checks its events the same way). Waking the waiter after every send cost a
pipelining client a Trio round per request: ~100 µs of a 2-core box's CPU for each GetMany and its reply,
measured, a third of a pipelined 1 KiB block's client CPU.
"""

import ctypes
import platform

import trio
import zmq

POLL_SAFETY = 0.5   # a last resort: re-check ZMQ_EVENTS at least this often
ZERO_COPY_MIN = 64 * 1024   # below this, copying a frame is cheaper than tracking a zero-copy one
_NOW, _NOW_MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)   # plain ints: enum arithmetic costs µs
_IN, _OUT, _EVENTS = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.EVENTS)
# glibc's mallopt parameters and the values set: block-sized buffers (up to 1 MiB) come from the heap, and up
# to 16 MiB freed at its top stay there for the next message instead of going back to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 4 << 20, 16 << 20
_tuned = False


def keep_block_buffers() -> None:
    """Let the process reuse its block-sized buffers. glibc gives each allocation over 128 KiB its own mapping
    and returns it on free, so every 256 KiB message (libzmq's receive buffer, CURVE's plaintext, the bytes
    Python makes) cost 64 page faults, a zeroing and an unmap: ~15% of a receiving client's CPU per block,
    measured with perf. Once per process; nothing where the C library is not glibc."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):   # a glibc without mallopt: the defaults stay, nothing breaks
        pass


class TrioSocket:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self._waiter: trio.CancelScope | None = None
        self._changed = trio.Event()
        self._send_lock = trio.Lock()
        self._wanted = [0, 0, 0]   # tasks in _wait for POLLIN (index 1) and POLLOUT (index 2)

    def _poke(self) -> None:
        """Something happened on the socket: wake the waiter (if any) when what a task waits for is there now."""
        if self._waiter is None:
            return
        wanted = (_IN if self._wanted[_IN] else 0) | (_OUT if self._wanted[_OUT] else 0)
        if self.sock.getsockopt(_EVENTS) & wanted:
            self._waiter.cancel()

    async def _wait(self, flag: int) -> None:
        if self.sock.getsockopt(_EVENTS) & flag:
            return
        self._wanted[flag] += 1
        try:
            if self._waiter is not None:
                await self._changed.wait()
                return
            try:
                with trio.CancelScope(deadline=trio.current_time() + POLL_SAFETY) as self._waiter:
                    await trio.lowlevel.wait_readable(self.fd)
            finally:
                self._waiter = None
                self._changed.set()
                self._changed = trio.Event()
        finally:
            self._wanted[flag] -= 1

    async def recv_multipart(self, copy: bool = True):
        while True:
            # _wait returns at once when a message is there: reading ZMQ_EVENTS first is cheaper than the
            # zmq.Again a recv with nothing there raises
            await self._wait(_IN)
            frames = self._recv_now(copy)
            if frames is not None:
                return frames

    async def recv_views(self) -> list:
        """The next message, its frames of ZERO_COPY_MIN bytes or more as read-only memoryviews of the buffer
        libzmq received them into (a 256 KiB block is not copied again: ~35 µs a block on a busy 2-core box,
        measured), the others as bytes."""
        return _views(await self.recv_multipart(copy=False))

    def recv_views_nowait(self) -> list | None:
        """The next message as recv_views gives it, if one is waiting, else None."""
        frames = self.recv_nowait(copy=False)
        return None if frames is None else _views(frames)

    def recv_nowait(self, copy: bool = True):
        """The next message if one is waiting, else None."""
        return self._recv_now(copy) if self.sock.getsockopt(_EVENTS) & _IN else None

    def _recv_now(self, copy: bool):
        """The next message, or None if another task took it first (ZMQ_EVENTS has just said one is there)."""
        try:
            frames = self.sock.recv_multipart(_NOW, copy=copy)
        except zmq.Again:
            return None
        self._poke()
        return frames

    async def send_multipart(self, frames) -> None:
        """Send one message; large frames (block payloads) go zero-copy, small ones are copied.

        When no other task is waiting to send and the socket takes the message at once, this returns without
        a trip through the scheduler (a pipelined request costs microseconds, not a Trio round)."""
        if not self._send_lock.locked():
            try:
                self._send_now(frames)
            except zmq.Again:
                pass
            else:
                self._poke()
                return
        async with self._send_lock:   # frames of one message must not interleave with another's
            while True:
                try:
                    self._send_now(frames)
                except zmq.Again:
                    await self._wait(_OUT)
                    continue
                self._poke()
                return

    def _send_now(self, frames) -> None:
        """Send every frame without blocking; zmq.Again (nothing sent) when the first is not taken."""
        # ROUTER and DEALER take the rest of a message once they have taken its first frame
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            self.sock.send(frame, _NOW_MORE if i < last else _NOW, copy=len(frame) < ZERO_COPY_MIN)

    def close(self, linger: int = 0) -> None:
        self.sock.close(linger)


def _views(frames) -> list:
    """Frames (zmq.Frame) as bytes, or as read-only memoryviews (each keeps its frame alive) when large."""
    return [f.buffer.toreadonly() if len(f) >= ZERO_COPY_MIN else f.bytes for f in frames]
