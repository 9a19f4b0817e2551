"""What gateway clients (anyone on the LAN, unauthenticated) may make this node fetch from neighbours and store."""

import collections
import time

from edge.errors import EdgeError

# What gateway requests (anyone on the LAN, unauthenticated) may make this node fetch from neighbours and store,
# in a sliding window: enough for a household's viewing of what neighbours hold, not for filling the disk. The
# agent takes the byte amounts from its settings (gateway_fetch_client, gateway_fetch_total).
FETCH_WINDOW = 3600.0                 # seconds
FETCH_PER_CLIENT = 256 << 20          # bytes per client address in the window
FETCH_ALL_CLIENTS = 1 << 30           # bytes for all clients together in the window
FETCH_CLIENTS = 4096                  # client addresses remembered (the oldest is forgotten past it)


class OverBudget(EdgeError):
    """A client's (or every client's) fetch budget is spent; retry_after: seconds until there is room."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class FetchBudget:
    """Bytes fetched for gateway clients in a sliding window, per client address and in all. Counted in
    one-minute buckets, so memory is bounded by FETCH_CLIENTS x 60 small entries."""

    def __init__(self, per_client: int = FETCH_PER_CLIENT, total: int = FETCH_ALL_CLIENTS,
                 window: float = FETCH_WINDOW, clock=time.monotonic):
        self.per_client, self.total, self.window, self.clock = per_client, total, window, clock
        self._spent: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._all: collections.deque = collections.deque()

    def _sum(self, buckets: collections.deque, now: float) -> int:
        while buckets and buckets[0][0] <= now - self.window:
            buckets.popleft()
        return sum(n for _, n in buckets)

    def check(self, client: str) -> None:
        """OverBudget if client (or all clients) may not start a fetch now."""
        if not self.per_client or not self.total:
            raise OverBudget("this node fetches nothing from neighbours for gateway clients (gateway_fetch_client "
                             "or gateway_fetch_total is 0); content it holds is still served", int(self.window))
        now = self.clock()
        mine = self._spent.get(client)
        if mine is not None and self._sum(mine, now) >= self.per_client:
            raise OverBudget(f"this client has had {self.per_client >> 20} MiB fetched from neighbours in the "
                             f"last {self.window / 60:g} minutes; content this node holds is still served",
                             self._wait(mine, now))
        if self._sum(self._all, now) >= self.total:
            raise OverBudget(f"gateway clients have had {self.total >> 20} MiB fetched from neighbours in the last "
                             f"{self.window / 60:g} minutes; content this node holds is still served",
                             self._wait(self._all, now))

    def spend(self, client: str, n: int) -> None:
        now = self.clock()
        minute = now - now % 60
        mine = self._spent.pop(client, None) or collections.deque()
        self._spent[client] = mine            # most recent last: the oldest client is forgotten first
        while len(self._spent) > FETCH_CLIENTS:
            self._spent.popitem(last=False)
        for buckets in (mine, self._all):
            if buckets and buckets[-1][0] == minute:
                buckets[-1][1] += n
            else:
                buckets.append([minute, n])

    def _wait(self, buckets: collections.deque, now: float) -> int:
        return max(1, int(buckets[0][0] + self.window - now) + 1) if buckets else 1
