"""The one class that owns the poller's database connections: an async pool for queries and a
dedicated connection for LISTEN. Lost connections are retried with backoff (tenacity), so a
database restart costs time, never a crash or a message."""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from poller.resources import query

log = logging.getLogger(__name__)

Params = Mapping[str, Any]
Row = dict[str, Any]

# Connection trouble (server restart, network, pool timeout) is retried; anything else is a bug
# or a constraint, and is raised at once.
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    reason = str(exc).strip().splitlines()[0] if exc and str(exc).strip() else type(exc).__name__
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("database unavailable (%s); retry %d in %.1fs", reason, state.attempt_number, wait)


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(RETRYABLE),
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
        before_sleep=_log_retry,
        reraise=True,
    )


class Database:
    """Runs the named queries in sql/queries/ on a pool; retries until the database answers."""

    def __init__(self, url: str, max_size: int = 8, synchronous_commit: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "wa-poller"}
        if not synchronous_commit:
            # The poller's writes (leases, statuses, archive) may be committed asynchronously:
            # losing the last instant of them in a database crash only repeats sends (at least
            # once). Messages themselves are written by send_message, synchronously.
            kwargs["options"] = "-c synchronous_commit=off"
        # No check on checkout (it costs a round trip per query): a broken connection fails
        # its query, the pool discards it, and the retry takes another.
        self.pool = AsyncConnectionPool(
            url, min_size=2, max_size=max_size, open=False, kwargs=kwargs, timeout=10.0
        )

    async def open(self) -> None:
        async for attempt in _retrying():
            with attempt:
                await self.pool.open(wait=True, timeout=10.0)

    async def close(self) -> None:
        await self.pool.close()

    async def fetch(self, name: str, params: Params | None = None) -> list[Row]:
        async for attempt in _retrying():
            with attempt:
                async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(query(name), params)
                    return await cur.fetchall() if cur.description else []
        raise AssertionError("unreachable")

    async def execute(self, name: str, params: Params | None = None) -> int:
        async for attempt in _retrying():
            with attempt:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(query(name), params)
                    return cur.rowcount
        raise AssertionError("unreachable")

    async def listen(self, channel: str, wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `wake` on every notification on `channel` until `stop`; reconnects by itself.
        After a reconnect it wakes once too, for what was notified while it was away."""
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name="wa-poller-listen"
                ) as conn:
                    await conn.execute(f'listen "{channel}"')
                    log.debug("listening on %s", channel)
                    wake()
                    async for _ in conn.notifies():
                        wake()
                        if stop.is_set():
                            return
            except RETRYABLE as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", str(exc).strip()[:200])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
