"""A clock for the parts that take one (the transport server, the upload limit, the peer table): it moves only
when a test moves it, so a test of a bound that depends on time waits for events, not for seconds to pass."""

import trio


class ManualClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition, timeout: float = 20.0, what: str = "the condition") -> None:
    """Wait until condition() holds (checked every 10 ms of real time); fail after timeout seconds."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)
