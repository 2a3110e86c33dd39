"""Per-session pacing: a token bucket with jitter, so a WhatsApp number never bursts and its
sends do not tick like a metronome."""

import asyncio
import random
import time


class TokenBucket:
    """`rate_per_minute` tokens a minute, at most `burst` saved up; each wait is stretched by up
    to `jitter` of the interval. A rate of 0 means unlimited."""

    def __init__(
        self, rate_per_minute: float, burst: int = 1, jitter: float = 0.0, seed: object = None
    ) -> None:
        self.interval = 60.0 / rate_per_minute if rate_per_minute > 0 else 0.0
        self.burst = burst
        self.jitter = jitter
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self._rng = random.Random(seed)
        self._closed = asyncio.Event()

    def close(self) -> None:
        """The session is gone: a send waiting for a token stops waiting."""
        self._closed.set()

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait for a token; False if `stop` was set or the bucket closed first (no token is
        taken then)."""
        if not self.interval:
            return not (stop.is_set() or self._closed.is_set())
        async with self._lock:  # FIFO among the session's waiting sends
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) / self.interval)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                wait = (1 - self._tokens) * self.interval
                wait += self._rng.uniform(0, self.jitter * self.interval)
                if await _first_of(stop, self._closed, timeout=wait):
                    return False


async def _first_of(a: asyncio.Event, b: asyncio.Event, timeout: float) -> bool:
    """Wait until either event is set (True) or the timeout passes (False)."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w in pending:
        w.cancel()
    return bool(done)
