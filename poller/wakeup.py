"""When the reader reads the queue again: the poller's side of the wake-up.

The database's side is one SQL function, `private.arm_outbound_listener()`: it arms a flag,
and the first insert into the queue after that sends a NOTIFY on `wa_outbound` (and disarms).
It arms only while no transaction writing the queue is open (a SHARE lock taken NOWAIT), so a
read made after a successful arm sees every message committed before it, and every later one
notifies. While the poller is busy nothing is armed and the producers send no NOTIFY at all.

The contract of `Wakeup`:
- `notify()` is called for every NOTIFY (the LISTEN connection), when a session connects, when
  a lane ends or sent statuses are written (room again), and when a timer set with
  `after(delay)` fires (a retry's backoff ends: becoming visible notifies nobody).
- `busy()`: the last read took enough that more is probably waiting; the next `idle()` arms
  again before any wait.
- `pause()` is awaited when the reader has no room to read (memory full, no session with
  room): it waits for a notification or the poll interval without arming, since no read would
  follow the arm and every insert would pay for a NOTIFY.
- `idle(got)` is awaited after a read that took `got` jobs, fewer than a batch. It returns when
  the reader should read again: at once after a successful arm (one more read, which sees all
  that committed before the arm); after a short delay when the arm found the queue being
  written: 1 ms after a read that took something (a steady stream of inserts keeps the queue
  written, and its messages must not wait for a grown delay), growing up to 50 ms over empty
  reads (a long-open transaction must not make the reader spin); otherwise, once armed and an
  empty read behind it, at the first of a notification, a timer or the fallback poll interval.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

ARM_RETRY = 0.001
ARM_RETRY_MAX = 0.05


class Wakeup:
    def __init__(self, arm: Callable[[], Awaitable[bool]], poll_interval: float) -> None:
        self._arm = arm
        self._poll_interval = poll_interval
        self._event = asyncio.Event()
        self._armed = False  # armed before the last read: whatever it missed will notify
        self._retry = ARM_RETRY

    def notify(self) -> None:
        self._event.set()

    def after(self, delay: float) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._event.set)

    def busy(self) -> None:
        self._armed = False

    async def pause(self) -> None:
        await self._wait(self._poll_interval)

    async def idle(self, got: int) -> None:
        if got:
            self._retry = ARM_RETRY
        if got or not self._armed:
            self._armed = await self._arm()
            if self._armed:
                self._retry = ARM_RETRY
                return
            timeout, self._retry = self._retry, min(self._retry * 2, ARM_RETRY_MAX)
        else:
            timeout = self._poll_interval
        await self._wait(timeout)

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=timeout)
        self._event.clear()
        self._armed = False  # a notification disarmed the flag, or the wait was long
