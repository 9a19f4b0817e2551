"""The one bridge between Trio and asyncio: zeroconf's async API (and later aiortc) run on a plain asyncio loop in
a dedicated thread. Trio calls into it and awaits the result, with cancellation carried across; events come
back through a Trio memory channel. No other module touches asyncio."""

import asyncio
import threading

import trio


class AsyncioBridge:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="asyncio-bridge", daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    async def call(self, fn, *args):
        """Run the coroutine fn(*args) on the asyncio loop and return its result; cancelling the Trio caller
        cancels the asyncio task."""
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future.add_done_callback(lambda _: token.run_sync_soon(done.set, idempotent=True))
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()

    def channel(self, size: int = 256):
        """(send function for the asyncio side, Trio receive channel). The send never blocks the asyncio loop:
        when Trio falls behind by `size` events, the newest are dropped (each event is a fresh observation)."""
        send, receive = trio.open_memory_channel(size)
        token = trio.lowlevel.current_trio_token()

        def push(item):
            def deliver():
                try:
                    send.send_nowait(item)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
            try:
                token.run_sync_soon(deliver)
            except trio.RunFinishedError:
                pass
        return push, receive

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class open_bridge:
    """async with open_bridge() as bridge: ... (the loop thread stops on exit)."""

    async def __aenter__(self):
        self.bridge = AsyncioBridge()
        return self.bridge

    async def __aexit__(self, *exc):
        await trio.to_thread.run_sync(self.bridge.close)
