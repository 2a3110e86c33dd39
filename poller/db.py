"""The one class that owns the poller's database connections: an async pool for queries and a
dedicated connection for LISTEN. Lost connections are retried with backoff (tenacity), so a
database restart costs time, never a crash or a message."""

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
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

CONNECT_TIMEOUT = 10  # seconds, for one connection attempt
# A peer that vanished without a FIN (host down, a NAT or firewall forgetting the flow) is
# noticed by the kernel: idle probes after 5 s, 3 more 2 s apart; unacknowledged data 10 s.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
# The LISTEN connection only reads, so TCP alone never notices a server that stopped answering:
# after this many quiet seconds it is asked a query, and replaced if no answer comes in as many.
LISTEN_CHECK = 2.0
LISTEN_RECONNECT = 1.0  # seconds between attempts to open it again

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@|(password\s*=\s*)(?:'[^']*'|\S+)")


def masked(text: str) -> str:
    """`text` with the password of any URL or key=value connection string in it replaced."""
    return _PASSWORD.sub(lambda m: f"{m[1]}***@" if m[1] else f"{m[2]}***", text)


def conninfo_problem(url: str) -> str | None:
    """What `url` should be and why libpq would refuse it before connecting (password
    masked), or None."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        why = masked(str(exc).strip().splitlines()[0])
    else:
        if all(p.strip().isdigit() for p in params.get("port", "5432").split(",")):
            return None
        why = f"port {params['port']!r} is not a number"
    return (
        "should be a PostgreSQL URL (postgresql://user:password@host:port/dbname) or a "
        f"key=value connection string: {why}"
    )


def server_name(url: str) -> str:
    """The server and role `url` names, for logs: postgresql://user:***@host:port/dbname."""
    params = conninfo_to_dict(url)
    user = params.get("user", "")
    if user and "password" in params:
        user += ":***"
    host = params.get("host", "")
    if "port" in params:
        host += f":{params['port']}"
    return f"postgresql://{user}{'@' if user else ''}{host}/{params.get('dbname', '')}"


def _pool_noise(record: logging.LogRecord) -> bool:
    # psycopg_pool warns about each failed connection attempt; the retry line below says the
    # same with the server's name and the next delay, so the pool's copy is kept for DEBUG only.
    return not str(record.msg).startswith(
        ("error connecting in", "reconnection attempt in pool")
    ) or log.isEnabledFor(logging.DEBUG)


logging.getLogger("psycopg.pool").addFilter(_pool_noise)


# Told of every answer of the database (True, "") and every failure that is retried (False, why).
Observer = Callable[[bool, str], None]


def _retrying(
    server: str, closing: Callable[[], bool], observer: Observer | None = None
) -> AsyncRetrying:
    def give_up(state: RetryCallState) -> bool:
        # Once the pool closes, or this task is cancelled, nothing can succeed: an error raised
        # while a cancelled query cleans up (the pool closed under it) would otherwise replace
        # the cancellation and be retried for ever.
        task = asyncio.current_task()
        return closing() or (task is not None and task.cancelling() > 0)

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = str(exc).strip().splitlines()[0] if exc and str(exc).strip() else repr(exc)
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "database unavailable: %s (%s); retry %d in %.1f s",
            server,
            masked(reason),
            state.attempt_number,
            wait,
        )
        if observer:
            observer(False, masked(reason))

    return AsyncRetrying(
        retry=retry_if_exception_type(RETRYABLE),
        stop=give_up,
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
        before_sleep=log_retry,
        reraise=True,
    )


class Database:
    """Runs the named queries in sql/queries/ on a pool; retries until the database answers."""

    def __init__(
        self,
        url: str,
        max_size: int = 8,
        synchronous_commit: bool = False,
        observer: Observer | None = None,
    ) -> None:
        self.url = url
        self._observer = observer
        self.server = server_name(url)
        self._closing = False
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": "wa-poller",
            "connect_timeout": CONNECT_TIMEOUT,
            **KEEPALIVES,
        }
        if not synchronous_commit:
            # The poller's writes (leases, statuses, archive) may be committed asynchronously:
            # losing the last instant of them in a database crash only repeats sends (at least
            # once). Messages themselves are written by send_message, synchronously.
            self._kwargs["options"] = "-c synchronous_commit=off"
        # No check on checkout (it costs a round trip per query): a broken connection fails
        # its query, the pool discards it, and the retry takes another.
        self.pool = AsyncConnectionPool(
            url, min_size=2, max_size=max_size, open=False, kwargs=self._kwargs, timeout=10.0
        )

    async def open(self) -> None:
        """Wait until the server takes a connection, then open the pool."""
        # Not pool.open(wait=True): when that times out the pool closes for good, and every
        # retry after it fails at once ("pool has already been opened/closed").
        async for attempt in self._retrying():
            with attempt:
                probe = await psycopg.AsyncConnection.connect(self.url, **self._kwargs)
                await probe.close()
        self._answered()
        await self.pool.open()

    async def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        await self.pool.close(timeout=timeout)

    async def fetch(self, name: str, params: Params | None = None) -> list[Row]:
        async for attempt in self._retrying():
            with attempt:
                async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(query(name), params)
                    rows = await cur.fetchall() if cur.description else []
                self._answered()
                return rows
        raise AssertionError("unreachable")

    async def execute(self, name: str, params: Params | None = None) -> int:
        async for attempt in self._retrying():
            with attempt:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(query(name), params)
                self._answered()
                return cur.rowcount
        raise AssertionError("unreachable")

    def _retrying(self) -> AsyncRetrying:
        return _retrying(self.server, lambda: self._closing, self._observer)

    def _answered(self) -> None:
        if self._observer:
            self._observer(True, "")

    async def listen(self, channel: str, wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `wake` on every notification on `channel` until `stop`; reconnects by itself,
        also when the connection stops answering. After a reconnect it wakes once too, for what
        was notified while it was away."""
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    application_name="wa-poller-listen",
                    connect_timeout=CONNECT_TIMEOUT,
                    **KEEPALIVES,
                )
                try:
                    await conn.execute(f'listen "{channel}"')
                    log.debug("listening on %s", channel)
                    wake()
                    while not stop.is_set():
                        async for _ in conn.notifies(timeout=LISTEN_CHECK):
                            wake()
                        if not stop.is_set() and not await _answers(conn, LISTEN_CHECK):
                            raise psycopg.OperationalError(
                                f"no answer to a check in {LISTEN_CHECK:g} s"
                            )
                finally:
                    await conn.close()
            except RETRYABLE as exc:
                log.warning(
                    "LISTEN connection lost: %s (%s); reconnecting in %g s",
                    self.server,
                    masked(str(exc).strip()[:200]),
                    LISTEN_RECONNECT,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=LISTEN_RECONNECT)


async def _answers(conn: psycopg.AsyncConnection, timeout: float) -> bool:
    """Whether `conn` answers a query within `timeout`; if not, it is closed."""
    check = asyncio.ensure_future(conn.execute("select 1"))
    done, _ = await asyncio.wait({check}, timeout=timeout)
    if not done:
        # Cancelling the query first would make psycopg ask the server to cancel it and wait
        # up to 10 s for that; with the connection closed under it, the query ends at once.
        conn.pgconn.finish()
        check.cancel()
        with contextlib.suppress(asyncio.CancelledError, *RETRYABLE):
            await check
        return False
    check.result()
    return True
