"""The daemon: wires the database, the transport, the sessions, receipts and the dispatcher,
and stops cleanly on SIGTERM or SIGINT (the handlers only set an event)."""

import asyncio
import contextlib
import logging
import signal

from poller.db import Database
from poller.dispatcher import Dispatcher
from poller.errors import ConfigError
from poller.groups import GroupSync
from poller.receipts import Receipts
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.transports import make_transport

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "wa_outbound"  # see private.wake_outbound_listener
STATS_EVERY = 10.0  # seconds between progress lines


async def run_daemon(settings: Settings, stop: asyncio.Event | None = None) -> None:
    if not settings.database_url:
        raise ConfigError("no database URL: set WA_DATABASE_URL")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    db = Database(settings.database_url, synchronous_commit=settings.synchronous_commit)
    await db.open()
    transport = make_transport(settings)
    receipts = Receipts(db)
    sessions = SessionManager(db, transport, receipts, settings)
    dispatcher = Dispatcher(db, sessions, receipts, settings)
    groups = GroupSync(db, sessions.clients, settings.group_sync_interval)
    sessions.on_groups_changed(groups.request)
    try:
        await dispatcher.check_queue_functions()
        await sessions.heartbeat()
        log.info(
            "poller started: %d session(s), transport %s", len(sessions.clients), settings.transport
        )
        background = [
            asyncio.create_task(
                db.listen(NOTIFY_CHANNEL, dispatcher.wake.set, stop), name="listen"
            ),
            asyncio.create_task(receipts.run(stop), name="receipts"),
            asyncio.create_task(sessions.run(stop), name="sessions"),
            asyncio.create_task(groups.run(stop), name="group-sync"),
            asyncio.create_task(_report(dispatcher, stop), name="stats"),
        ]
        try:
            await _dispatch_until_stopped(dispatcher, stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            try:  # with the database gone these would retry for ever: bound them
                await asyncio.wait_for(_hand_over(receipts, sessions), settings.shutdown_timeout)
            except TimeoutError:
                log.warning(
                    "shutdown: could not record the last receipts and session states in "
                    "time; the session leases will expire instead"
                )
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(transport.close(), settings.shutdown_timeout)
        await db.close()
    log.info(
        "poller stopped: sent %d, failed %d, retried %d",
        dispatcher.stats.sent,
        dispatcher.stats.failed,
        dispatcher.stats.retried,
    )


async def _hand_over(receipts: Receipts, sessions: SessionManager) -> None:
    await receipts.flush()
    await sessions.stop()


async def _dispatch_until_stopped(dispatcher: Dispatcher, stop: asyncio.Event) -> None:
    run = asyncio.create_task(dispatcher.run(stop), name="dispatch")
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if run.done():  # the dispatcher died: let systemd restart us, leases return the messages
        stopped.cancel()
        stop.set()
        run.result()
    log.info("stopping: %d message(s) in flight", dispatcher.inflight)
    # After the stop the lanes finish the send in hand and hand the rest back; past the
    # timeout they are cancelled, and their leases return the messages to the queue.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(run), timeout=dispatcher.settings.shutdown_timeout)
    if not run.done():
        log.warning(
            "shutdown timeout: abandoning %d message(s) to their leases", dispatcher.inflight
        )
        run.cancel()
    await asyncio.gather(run, return_exceptions=True)


async def _report(dispatcher: Dispatcher, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=STATS_EVERY)
        s = dispatcher.stats
        log.info(
            "sent %d, failed %d, retried %d, parked %d, in flight %d",
            s.sent,
            s.failed,
            s.retried,
            s.parked,
            dispatcher.inflight,
        )
