"""The daemon: wires the database, the transport, the sessions, receipts and the dispatcher,
and stops cleanly on SIGTERM or SIGINT (the handlers only set an event)."""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from functools import partial
from typing import Any

from poller.db import Database
from poller.dispatcher import Dispatcher
from poller.errors import ConfigError
from poller.groups import GroupSync
from poller.metrics import Health, Metrics, MetricsServer
from poller.receipts import Receipts
from poller.sdnotify import Notifier, keep_alive
from poller.sessions import SessionManager
from poller.settings import Settings, host_port
from poller.tasks import watch
from poller.transports import make_transport

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "wa_outbound"  # see private.wake_outbound_listener
STATS_EVERY = 10.0  # seconds between progress lines
# The reader turns at least every poll interval; a turn may also wait this long for a slow
# query or a pacing-free batch before the watchdog calls the loop hung.
WATCHDOG_GRACE = 20.0


class _Deadline:
    """What is left of WA_SHUTDOWN_TIMEOUT after a stop, so that it ends in time whatever the
    database does. The last part of it is kept for closing the transport and the pool: a
    database that does not answer takes only the rest."""

    def __init__(self, seconds: float) -> None:
        self._at = asyncio.get_running_loop().time() + seconds
        self._reserve = min(0.5, seconds / 4)

    def left(self, closing: bool = False) -> float:
        reserve = 0.0 if closing else self._reserve
        return max(0.0, self._at - reserve - asyncio.get_running_loop().time())

    async def run(self, work: Awaitable[Any], closing: bool, failed: str) -> None:
        try:
            await asyncio.wait_for(work, self.left(closing))
        except TimeoutError:
            log.warning("shutdown timeout: %s", failed)
        except Exception as exc:  # a cancelled step may end in the pool's error instead
            log.warning("shutdown: could not %s (%s)", failed.split(";")[0], exc)


async def run_daemon(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (SIGTERM, SIGINT); from then on return within
    WA_SHUTDOWN_TIMEOUT. Raises TaskDied, after the same stop, if a part of it died."""
    if not settings.database_url:
        raise ConfigError("no database URL: set WA_DATABASE_URL")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    systemd = Notifier.from_environ()  # before any worker starts: they must not inherit it
    metrics, health = Metrics(), Health()
    db = Database(
        settings.database_url,
        synchronous_commit=settings.synchronous_commit,
        observer=lambda ok, why: _database_state(health, ok, why),
    )
    transport = make_transport(settings)
    receipts = Receipts(db, metrics=metrics)
    sessions = SessionManager(db, transport, receipts, settings, metrics)
    dispatcher = Dispatcher(db, sessions, receipts, settings, metrics, health.beat, stop)
    groups = GroupSync(db, sessions.clients, settings.group_sync_interval)
    sessions.on_groups_changed(groups.request)
    death = None
    opened = False
    reader: asyncio.Task[None] | None = None
    background: list[asyncio.Task[None]] = []
    server = None
    if settings.metrics_addr:
        host, port = host_port(settings.metrics_addr)
        server = MetricsServer(host, port, metrics, health)  # 503 until the loop runs
        log.info("metrics and health on http://%s:%d/metrics and /healthz", host, server.port)
    try:
        opened = await _unless_stopped(db.open(), stop)
        if opened:
            systemd.ready()
        if opened and await _unless_stopped(_start(dispatcher, sessions), stop):
            log.info(
                "poller started: %d session(s), transport %s",
                len(sessions.clients),
                settings.transport,
            )
            parts = dispatcher.parts()
            reader = asyncio.create_task(parts.pop("reader"), name="reader")
            background = [
                *(asyncio.create_task(part, name=name) for name, part in parts.items()),
                asyncio.create_task(
                    db.listen(NOTIFY_CHANNEL, dispatcher.wakeup.notify, stop), name="listen"
                ),
                asyncio.create_task(receipts.run(stop), name="receipts"),
                asyncio.create_task(sessions.run(stop), name="sessions"),
                asyncio.create_task(groups.run(stop), name="group-sync"),
                asyncio.create_task(_report(dispatcher, systemd, stop), name="stats"),
                asyncio.create_task(
                    metrics.watch_backlog(db, sessions.poller_id, health, stop), name="metrics"
                ),
            ]
            if systemd.watchdog_interval:
                # Pinged while the reader turns (a retried query counts: see _database_state).
                alive = partial(health.beating, WATCHDOG_GRACE + settings.poll_interval)
                background.append(
                    asyncio.create_task(keep_alive(systemd, alive, stop), name="watchdog")
                )
            # A dead part stops the daemon (systemd restarts it; leases return the messages).
            death = await watch([reader, *background], stop)
    finally:
        systemd.stopping()
        deadline = _Deadline(settings.shutdown_timeout)
        if reader:
            await _drain(reader, dispatcher, deadline)
        for task in background:
            task.cancel()
        if background:  # bounded: a task may turn its cancellation into one more retry
            await asyncio.wait(background, timeout=deadline.left())
        if opened:
            await deadline.run(
                _hand_over(receipts, sessions),
                closing=False,
                failed="the last receipts and session states are not recorded; the session "
                "leases will expire instead",
            )
        await deadline.run(transport.close(), closing=True, failed="the transport did not close")
        await db.close(timeout=deadline.left(closing=True))
        if server:
            server.close()
    log.info(
        "poller stopped: sent %d, failed %d, retried %d",
        dispatcher.stats.sent,
        dispatcher.stats.failed,
        dispatcher.stats.retried,
    )
    if death:
        raise death


async def _unless_stopped(work: Awaitable[Any], stop: asyncio.Event) -> bool:
    """Await `work` unless `stop` comes first (then `work` is cancelled): whether it finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()  # it unwinds while the shutdown runs, bounded by WA_SHUTDOWN_TIMEOUT
        return False
    task.result()
    return True


async def _start(dispatcher: Dispatcher, sessions: SessionManager) -> None:
    await dispatcher.check_queue_functions()
    await sessions.heartbeat()


async def _drain(reader: asyncio.Task[None], dispatcher: Dispatcher, deadline: _Deadline) -> None:
    log.info("stopping: %d message(s) in flight", dispatcher.inflight)
    # The reader ends after its read in hand; the lanes finish the send in hand and give the
    # rest back. Past the deadline they are cancelled, and their leases return the messages.
    await asyncio.wait({reader}, timeout=deadline.left())
    if reader.done():
        await deadline.run(
            dispatcher.drain(),
            closing=False,
            failed=f"abandoning {dispatcher.inflight} message(s) to their leases",
        )
    else:
        log.warning(
            "shutdown timeout: abandoning %d message(s) to their leases", dispatcher.inflight
        )
        reader.cancel()
        await asyncio.wait({reader}, timeout=deadline.left())


async def _hand_over(receipts: Receipts, sessions: SessionManager) -> None:
    await receipts.flush()
    await sessions.stop()


def _database_state(health: Health, ok: bool, why: str) -> None:
    health.database(ok, why)
    if not ok:
        health.beat()  # a query being retried is no hung loop: a restart would not help


async def _report(dispatcher: Dispatcher, systemd: Notifier, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=STATS_EVERY)
        s = dispatcher.stats
        line = (
            f"sent {s.sent}, failed {s.failed}, retried {s.retried}, set aside {s.set_aside}, "
            f"in flight {dispatcher.inflight}"
        )
        log.info("%s", line)
        systemd.status(line)
