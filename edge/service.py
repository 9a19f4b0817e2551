"""What every agent service shares: the handle a `serve_*` reports, and the one counter registry.

A service is `async def serve_x(..., *, task_status)`: it reports a Handle through `task_status.started(handle)`
once it serves, and runs until cancelled. `handle.stats()` is what `hearth status` shows of it; `await
handle.drain()` stops it taking new work and returns once the work it has finished (the agent bounds the wait
with its shutdown deadline and cancels the service afterwards).

The Registry holds typed counters and gauges by their metric name (hearth_NAME on /metrics). A service counts
through a Counters group: short names (what `hearth status` shows) mapped to the registry's counters, so the
same numbers feed both. A counter is written by one thread only (the service's own), so it needs no lock.

ServiceTree starts services in order, each in a cancel scope of its own, and stops them in reverse order within
one deadline: drain, then cancel, then wait for the service's own way out.
"""

import logging

import trio

log = logging.getLogger(__name__)


class Counter:
    """A number that only goes up."""

    kind = "counter"
    __slots__ = ("name", "help", "value")

    def __init__(self, name: str, help: str):
        self.name, self.help, self.value = name, help, 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def read(self):
        return self.value


class Gauge:
    """A number that goes up and down: set, or read from a function when sampled."""

    kind = "gauge"
    __slots__ = ("name", "help", "value", "fn")

    def __init__(self, name: str, help: str, fn=None):
        self.name, self.help, self.value, self.fn = name, help, 0, fn

    def set(self, value) -> None:
        self.value = value

    def read(self):
        return self.fn() if self.fn is not None else self.value


class Registry:
    """Every counter and gauge of one agent, by metric name (without the hearth_ prefix)."""

    def __init__(self):
        self._metrics: dict[str, Counter | Gauge] = {}

    def counter(self, name: str, help: str) -> Counter:
        return self._add(Counter(name, help))

    def gauge(self, name: str, help: str, fn=None) -> Gauge:
        return self._add(Gauge(name, help, fn))

    def _add(self, metric):
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def __getitem__(self, name: str):
        return self._metrics[name]

    def samples(self) -> dict[str, tuple[str, str, float]]:
        """name -> (type, help, value), what edge.metrics renders."""
        return {m.name: (m.kind, m.help, m.read()) for m in self._metrics.values()}


class Counters:
    """A service's counters under short names, registered in a Registry as metrics:
    `Counters(registry, {"busy": ("busy_total", "requests told to retry later"), ...})`.
    Reads and writes like a dict of numbers (`c["busy"] += 1`), so code that counts stays plain."""

    def __init__(self, registry: Registry | None, spec: dict[str, tuple[str, str]]):
        registry = registry if registry is not None else Registry()
        self._by_short = {short: registry.counter(name, help) for short, (name, help) in spec.items()}

    def inc(self, short: str, n: int = 1) -> None:
        self._by_short[short].value += n

    def __getitem__(self, short: str):
        return self._by_short[short].value

    def __setitem__(self, short: str, value) -> None:
        self._by_short[short].value = value

    def get(self, short: str, default=0):
        counter = self._by_short.get(short)
        return default if counter is None else counter.value

    def values(self) -> dict:
        return {short: c.value for short, c in self._by_short.items()}


class Handle:
    """What a running service reports: its figures, and a graceful stop. Services with nothing to finish use it
    as it is."""

    def __init__(self, name: str, stats=None):
        self.name = name
        self._stats = stats

    def stats(self) -> dict:
        return self._stats() if self._stats is not None else {}

    async def drain(self) -> None:
        """Stop taking new work; return once the work running has finished."""


class _Service:
    def __init__(self, name: str):
        self.name = name
        self.handle: Handle | None = None
        self.scope = trio.CancelScope()
        self.done = trio.Event()


class ServiceTree:
    """The agent's services in start order, each in a cancel scope of its own inside one nursery, so they can
    be stopped one at a time, last started first."""

    def __init__(self):
        self._running: list[_Service] = []

    def __contains__(self, name: str) -> bool:
        return any(s.name == name for s in self._running)

    def get(self, name: str) -> Handle | None:
        return next((s.handle for s in self._running if s.name == name), None)

    def stats(self) -> dict:
        """Each service's stats, in start order."""
        return {s.name: s.handle.stats() for s in self._running}

    async def start(self, nursery: trio.Nursery, name: str, fn, /, *args, **kwargs) -> Handle:
        """nursery.start(fn, *args, **kwargs) in a scope of its own; returns the handle fn reports."""
        service = _Service(name)

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with service.scope:
                    await fn(*args, **kwargs, task_status=task_status)
            finally:
                service.done.set()
        service.handle = await nursery.start(run)
        self._running.append(service)
        return service.handle

    async def stop(self, deadline: float) -> list[tuple[str, float, bool]]:
        """Drain and then cancel each service, the last started first, all within deadline (trio's clock): a
        drain still running at the deadline is cut, and the services after it are cancelled without one.
        Returns (name, seconds, drained in time) per service, in the order they were stopped; logs a line each."""
        stopped = []
        for service in reversed(self._running):
            began = trio.current_time()
            late = began >= deadline and not service.done.is_set()   # reached past the deadline, still running
            with trio.move_on_at(deadline):
                if not late:
                    await service.handle.drain()
                service.scope.cancel()
                await service.done.wait()   # its own way out (sockets closed, threads joined) included
            service.scope.cancel()
            took, whole = trio.current_time() - began, service.done.is_set() and not late
            stopped.append((service.name, took, whole))
            if whole:
                log.info("stopping: %s drained in %.2f s", service.name, took)
            elif late:
                log.warning("stopping: %s cancelled without a drain (past the deadline)", service.name)
            else:
                log.warning("stopping: %s cut at the deadline after %.2f s", service.name, took)
        return stopped
