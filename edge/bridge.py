"""The one bridge between Trio and asyncio: zeroconf's async API (and later aiortc) run on a plain asyncio loop in
a dedicated thread. Trio calls into it and awaits the result, with cancellation carried across; events come
back through a Trio memory channel. No other module touches asyncio."""

import asyncio
import concurrent.futures
import logging
import threading

import trio

from edge.service import Handle

log = logging.getLogger(__name__)


class BridgeClosed(Exception):
    """A call into the asyncio loop after the bridge began to stop."""


class AsyncioBridge:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.closing = False
        self._thread = threading.Thread(target=self._run, name="asyncio-bridge", daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # stopped: every task still on the loop (a call abandoned, one a service spawned) is cancelled and
        # awaited, so none is destroyed pending and none runs on after the bridge
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    async def call(self, fn, *args):
        """Run the coroutine fn(*args) on the asyncio loop and return its result; cancelling the Trio caller
        cancels the asyncio task. BridgeClosed once the bridge is stopping (a service's way out that comes
        after the bridge's, when a shutdown's deadline has cut the order short)."""
        if self.closing:
            raise BridgeClosed("the asyncio loop has stopped")
        coro = fn(*args)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:   # closed between the check and here
            coro.close()
            raise BridgeClosed("the asyncio loop has stopped") from None
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future.add_done_callback(lambda _: token.run_sync_soon(done.set, idempotent=True))
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.closing:   # the bridge's stop cancelled it with every task on the loop
                raise BridgeClosed("the asyncio loop has stopped") from None
            raise

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
        """Stop the loop (its tasks cancelled) and join its thread for at most 5 s (blocking: call it from a
        worker thread, as open_bridge does)."""
        self.closing = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            log.error("the asyncio loop did not stop within 5 s; leaving it behind")


class TaskSet:
    """The asyncio tasks a service spawns on the loop, kept (a task nobody holds may be destroyed while it
    runs) and cancelled together when the service stops. Used on the asyncio side only."""

    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class BridgeHandle(Handle):
    def __init__(self, bridge: AsyncioBridge):
        super().__init__("bridge")
        self.bridge = bridge

    def stats(self) -> dict:
        return {"running": self.bridge._thread.is_alive()}


async def serve_bridge(*, task_status=trio.TASK_STATUS_IGNORED):
    """The asyncio loop as an agent service: reports a BridgeHandle; on the way out the loop's tasks are
    cancelled and its thread joined from a worker thread."""
    async with open_bridge() as bridge:
        task_status.started(BridgeHandle(bridge))
        await trio.sleep_forever()


class open_bridge:
    """async with open_bridge() as bridge: ... (the loop thread stops on exit)."""

    async def __aenter__(self):
        self.bridge = AsyncioBridge()
        return self.bridge

    async def __aexit__(self, *exc):
        with trio.CancelScope(shield=True):   # runs when cancelled too; close() bounds its own wait
            await trio.to_thread.run_sync(self.bridge.close)
