"""A byte-rate limit shared by everything a node uploads (blocks to peers, the gateway's bodies to browsers):
what the household lends, set by `upload_limit` (or a seed's [limits] upload).

A token bucket that may run into debt: spend(n) takes n bytes at once and, if that leaves the bucket below
zero, sleeps until the debt is paid at `rate`. Senders waiting together each add their debt, so the total stays
at the rate however many connections there are, and one large block never waits forever for a full bucket.
"""

import threading
import time

import trio


class ByteRate:
    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        """rate: bytes per second (0: unlimited); burst: bytes that may go at once after a quiet spell
        (default: a quarter of a second's worth, at least 64 KiB)."""
        if rate < 0:
            raise ValueError("a rate is 0 (unlimited) or more bytes per second")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate / 4, 64 * 1024))
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()   # the transport's serving thread and the gateway (Trio) both spend

    ahead: float | None = None   # seconds of debt past which debit_within refuses (None: no bound)

    def debit_within(self, n: int) -> float | None:
        """debit(n), or None (nothing taken) while the bucket is already more than `ahead` seconds in debt: a
        sender that holds what it cannot send yet (the transport) then waits behind() seconds before it pays,
        instead of scheduling bytes far ahead at today's rate, so a lower rate set meanwhile (the governor's
        back-off) takes effect within `ahead` seconds."""
        if self.rate and self.ahead is not None:
            with self._lock:
                if self._tokens_at(self._clock()) < -self.ahead * self.rate:
                    return None
        return self.debit(n)

    def _tokens_at(self, now: float) -> float:
        """The tokens the bucket holds at now (a rate is set; the lock held)."""
        return min(self.burst, self._tokens + (now - self._stamp) * self.rate)

    def _debit(self, n: int, now: float) -> float:
        """debit's arithmetic (a rate is set; the lock held): the governor's lanes pay and count under one
        acquisition of the lock with it (edge/governor/caps.py)."""
        self._tokens = self._tokens_at(now) - n
        self._stamp = now
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def behind(self) -> float:
        """Seconds until the bucket is no more than `ahead` seconds in debt (when debit_within takes again)."""
        if not self.rate or self.ahead is None:
            return 0.0
        with self._lock:
            tokens = min(self.burst, self._tokens + (self._clock() - self._stamp) * self.rate)
            return max(0.0, (-tokens - self.ahead * self.rate) / self.rate) + 0.001

    def set_rate(self, rate: float) -> None:
        """Change the rate (0: unlimited) from now on, as the governor does with schedules and the back-off;
        the burst follows it (a quarter of a second's worth, at least 64 KiB), tokens already earned are kept
        up to the new burst."""
        with self._lock:
            now = self._clock()
            if self.rate:
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            else:
                self._tokens = max(rate / 4, 64 * 1024)
            self._stamp = now
            self.rate = float(rate)
            self.burst = max(rate / 4, 64 * 1024)
            self._tokens = min(self._tokens, self.burst)

    def debit(self, n: int) -> float:
        """Take n bytes now; the seconds to wait before they may go (0 when within the allowance)."""
        if not self.rate:
            return 0.0
        with self._lock:
            return self._debit(n, self._clock())

    def count_unlimited(self, n: int) -> bool:
        """True if this bucket has no cap (n bytes may go now: what debit_within of each of their blocks would
        say, in one call); False otherwise, nothing taken (each block then pays through debit_within)."""
        return not self.rate

    def take_now(self, n: int) -> bool:
        """Take n bytes only if they may go at once (no debt); False, and nothing taken, otherwise."""
        if not self.rate:
            return True
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if tokens < n:
                self._tokens = tokens
                return False
            self._tokens = tokens - n
            return True

    async def spend(self, n: int) -> None:
        wait = self.debit(n)
        if wait:
            await trio.sleep(wait)


UNLIMITED = ByteRate(0)
