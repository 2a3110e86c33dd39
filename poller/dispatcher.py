"""Dispatch: queue → WhatsApp with per-group FIFO, per-session pacing, retries through the
queue's visibility timeout, and a lease on everything held in memory.

Delivery is at least once. A message's queue row is archived in the same statement that writes
its `sent` status, so a crash can only repeat a send whose acknowledgement had not been written
yet (the messages in flight at that moment); everything else is either still leased (and comes
back when the lease ends) or final.

Per-group order: the read (private.take_outbound, with pgmq read_grouped_rr's rule) only offers
a group while its oldest message is visible, and a lane (one per group) sends its messages one
after another and stops at the first transient failure, releasing the rest behind it. So a later
message never overtakes an earlier one, across retries, restarts and pollers.
"""

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass

from poller.backoff import Backoff
from poller.db import Database, Row
from poller.errors import SchemaNotReady
from poller.receipts import Receipts
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.transports.base import (
    NotConnected,
    PermanentSendError,
    SendResult,
    TransientSendError,
)
from poller.wakeup import Wakeup

log = logging.getLogger(__name__)

# The queue functions the named queries call, with the signatures they call them by: the poller
# touches the queue through nothing else.
QUEUE_FUNCTIONS = (
    "private.take_outbound(text, uuid[], integer[], bigint[], integer, integer, double precision)",
    "private.outbound_sent(uuid[], bigint[], text[], timestamptz[])",
    "private.outbound_retry(uuid, bigint, text, double precision)",
    "private.outbound_fail(uuid[], bigint[], text[])",
    "private.outbound_give_back(uuid[], bigint[], double precision)",
    "private.outbound_extend(bigint[], double precision)",
    "private.arm_outbound_listener()",
)
# Under load, let the next batch gather before reading it: each read, claim and status write
# costs about the same for 1 message as for 50, so small batches spend the database's CPU on
# overhead. A light load (a few messages a read) is read at once, for latency.
LIGHT_BATCH = 4
LEASE_MARGIN = 1.0  # seconds: a send is not started this close to the end of its lease
NOT_CONNECTED_DELAY = 1.0  # seconds before a lane refused as not connected is read again
GATHER_PER_MESSAGE = 0.0005
GATHER_MAX = 0.02


@dataclass
class Job:
    msg_id: int
    message_id: uuid.UUID
    group_jid: str
    session_id: uuid.UUID
    content: str
    attempts: int
    leased_until: float  # monotonic time our queue lease is known to last until


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    set_aside: int = 0  # given back because their session was not sending


class Dispatcher:
    def __init__(
        self, db: Database, sessions: SessionManager, receipts: Receipts, settings: Settings
    ) -> None:
        self.db = db
        self.sessions = sessions
        self.receipts = receipts
        self.settings = settings
        self.stats = Stats()
        self.wakeup = Wakeup(self._arm_listener, settings.poll_interval)
        self._stop = asyncio.Event()
        self._inflight: dict[int, Job] = {}
        self._queues: dict[str, deque[Job]] = {}
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._sent: list[tuple[Job, SendResult]] = []
        self._flush_wake = asyncio.Event()
        self._flush_busy = False
        self._flushing: asyncio.Task[None] | None = None
        self._backoff = Backoff(settings.retry_initial, settings.retry_max)
        sessions.on_connected(self._session_connected)

    async def check_queue_functions(self) -> None:
        rows = await self.db.fetch("outbound_functions", {"signatures": list(QUEUE_FUNCTIONS)})
        if rows:
            raise SchemaNotReady(
                "the database lacks, or does not let this role execute, "
                + ", ".join(r["signature"] for r in rows)
                + ": run wa-poller db bootstrap (or supabase db push) and connect as wa_poller"
            )

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- reading ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Read and dispatch until `stop`; then let the lanes finish or hand their work back."""
        self._stop = stop
        flusher = asyncio.create_task(self._flush_loop(), name="flush")
        leases = asyncio.create_task(self._lease_loop(), name="leases")
        try:
            await self._read_loop()
        finally:
            leases.cancel()
            try:
                await self._drain()
            finally:
                flusher.cancel()

    async def _read_loop(self) -> None:
        while not self._stop.is_set():
            qty = max(
                0, min(self.settings.batch_size, self.settings.max_inflight - len(self._inflight))
            )
            sessions = self.sessions.connected_ids()
            held = Counter(job.session_id for job in self._inflight.values())
            # A slow session must not fill the poller's memory.
            rooms = [self.settings.session_inflight - held[s] for s in sessions]
            read_at = time.monotonic()
            rows = await self.db.fetch(
                "take",
                {
                    "me": self.sessions.poller_id,
                    "sessions": sessions,
                    "rooms": rooms,
                    "held": list(self._inflight),
                    "vt": self.settings.visibility_timeout,
                    "qty": qty,
                    "ttl": self.settings.message_ttl,
                },
            )
            got = await self._admit(rows, read_at) if rows else 0
            if qty <= 0 or not any(room > 0 for room in rooms):
                # No room to read (the take still expired what is due): arming would only make
                # the next insert pay for a NOTIFY that no read follows.
                await self.wakeup.pause()
                continue
            if got >= qty:
                self.wakeup.busy()
                continue  # a full batch: more is probably waiting
            if got > LIGHT_BATCH:
                self.wakeup.busy()
                await asyncio.sleep(min(GATHER_MAX, got * GATHER_PER_MESSAGE))
                continue
            await self.wakeup.idle(got)

    async def _admit(self, rows: list[Row], read_at: float) -> int:
        """Hand the jobs the take returned to their lanes; returns how many were new. The take
        has settled in the database whatever could not go (archived, failed or handed back)."""
        new = 0
        for row in rows:
            if row["msg_id"] in self._inflight:
                continue  # ours already; the read only renewed its lease
            job = Job(
                row["msg_id"],
                row["message_id"],
                row["group_jid"],
                row["session_id"],
                row["content"],
                row["attempts"],
                leased_until=read_at + self.settings.visibility_timeout,
            )
            self._inflight[job.msg_id] = job
            self._queues.setdefault(job.group_jid, deque()).append(job)
            new += 1
        for jid in list(self._queues):
            if jid not in self._lanes:
                self._lanes[jid] = asyncio.create_task(self._lane(jid), name=f"lane-{jid}")
        return new

    # -- sending ---------------------------------------------------------------------------

    async def _lane(self, jid: str) -> None:
        queue = self._queues[jid]
        blocked = False  # a retry is pending: nothing behind it may go first
        try:
            while queue:
                job = queue[0]
                if blocked or self._stop.is_set():
                    await self._release(self._take_all(queue), delay=0.0)
                    continue
                if not self.sessions.is_connected(job.session_id):
                    await self._set_aside(queue)
                    continue
                if time.monotonic() > job.leased_until - LEASE_MARGIN:
                    # Our lease may have lapsed (the database was out of reach): another poller
                    # may have taken the message. Never send it on a lapsed lease.
                    log.warning(
                        "lease of queue message %s lapsed before its send; handing the group back",
                        job.msg_id,
                    )
                    await self._release(self._take_all(queue), delay=0.0)
                    continue
                if not await self.sessions.limiters[job.session_id].acquire(self._stop):
                    continue
                # The pacing wait can be long: the session may have dropped or changed hands.
                client = self.sessions.connected_client(job.session_id)
                if client is None:
                    await self._set_aside(queue)
                    continue
                try:
                    result = await client.send_text(jid, job.content, job.message_id)
                except NotConnected:
                    # The client said connected, WhatsApp did not take it: a moment before the
                    # next look, so that a client between the two does not spin the lane.
                    await self._set_aside(queue, delay=NOT_CONNECTED_DELAY)
                except PermanentSendError as exc:
                    queue.popleft()
                    await self._record_failed([(job.message_id, job.msg_id, str(exc))])
                except Exception as exc:
                    if not isinstance(exc, TransientSendError):
                        log.exception("unexpected error sending %s; retrying", job.message_id)
                    queue.popleft()
                    blocked = True
                    await self._retry(job, exc)
                else:
                    queue.popleft()
                    self._sent.append((job, result))
                    self._flush_wake.set()
        except Exception:
            # Not a send failure (those are handled above): a bug or a database error that is
            # not a lost connection. Stop holding these messages; their leases bring them back.
            log.exception("lane for %s failed; its messages return to the queue", jid)
            awaiting_write = {job.msg_id for job, _ in self._sent}
            for msg_id, job in list(self._inflight.items()):
                if job.group_jid == jid and msg_id not in awaiting_write:
                    del self._inflight[msg_id]
        finally:
            del self._queues[jid]
            del self._lanes[jid]
            self.wakeup.notify()

    async def _set_aside(self, queue: deque[Job], delay: float = 0.0) -> None:
        """A lane whose session is not sending: its jobs go back to the queue (no attempt
        counted), where the take leaves them until the session is connected, here or by the
        poller that took it over."""
        jobs = self._take_all(queue)
        await self._release(jobs, delay=delay)
        self.stats.set_aside += len(jobs)

    @staticmethod
    def _take_all(queue: deque[Job]) -> list[Job]:
        jobs = list(queue)
        queue.clear()
        return jobs

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wake.wait()
            self._flush_wake.clear()
            # Yield once so lanes that are ready add their sends; while the write is in flight
            # more gather, so batches grow with the load without a fixed delay.
            await asyncio.sleep(0)
            self._flush_busy = True
            try:
                await self._flush()
            except Exception:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled mid-write (the stop's deadline): the pool's error stands in
                    # for the cancellation, which must still end the loop.
                    raise asyncio.CancelledError from None
                log.exception("writing sent statuses failed; those messages return to the queue")
            finally:
                self._flush_busy = False

    async def _flush(self) -> None:
        batch, self._sent = self._sent, []
        if not batch:
            return
        try:
            await self.db.fetch(
                "record_sent",
                {
                    "ids": [job.message_id for job, _ in batch],
                    "wa_message_ids": [result.wa_message_id for _, result in batch],
                    "sent_ats": [result.timestamp for _, result in batch],
                    "msg_ids": [job.msg_id for job, _ in batch],
                },
            )
        finally:
            # Held (and leased) until written, or, if the write failed, left to the lease.
            for job, _ in batch:
                self._inflight.pop(job.msg_id, None)
        self.stats.sent += len(batch)
        self.receipts.retry_unmatched()
        self.wakeup.notify()

    # -- outcomes --------------------------------------------------------------------------

    async def _retry(self, job: Job, exc: BaseException) -> None:
        attempts = job.attempts + 1
        if attempts >= self.settings.max_attempts:
            reason = f"gave up after {attempts} attempts; last error: {exc}"
            await self._record_failed([(job.message_id, job.msg_id, reason)])
            return
        delay = self._backoff.delay(attempts)
        log.info(
            "message %s: attempt %d failed (%s); retry in %.1fs",
            job.message_id,
            attempts,
            exc,
            delay,
        )
        await self.db.fetch(
            "record_retry",
            {"id": job.message_id, "error": str(exc), "msg_id": job.msg_id, "delay": delay},
        )
        self._inflight.pop(job.msg_id, None)
        self._wake_after(delay)
        self.stats.retried += 1

    async def _record_failed(self, items: list[tuple[uuid.UUID, int, str]]) -> None:
        """Sends that failed for good (the attempt counts)."""
        for message_id, _, error in items:
            log.warning("message %s failed: %s", message_id, error)
        await self.db.fetch(
            "record_failed",
            {
                "ids": [i[0] for i in items],
                "errors": [i[2] for i in items],
                "msg_ids": [i[1] for i in items],
            },
        )
        for _, msg_id, _ in items:
            self._inflight.pop(msg_id, None)
        self.stats.failed += len(items)

    async def _release(self, jobs: list[Job], delay: float) -> None:
        if not jobs:
            return
        await self.db.fetch(
            "release",
            {
                "ids": [j.message_id for j in jobs],
                "msg_ids": [j.msg_id for j in jobs],
                "delay": delay,
            },
        )
        for job in jobs:
            self._inflight.pop(job.msg_id, None)
        self._wake_after(delay)

    def _wake_after(self, delay: float) -> None:
        """Read again when messages made invisible for `delay` come back: becoming visible
        notifies nobody, and the fallback poll may be far off."""
        self.wakeup.after(delay)

    async def _arm_listener(self) -> bool:
        return bool((await self.db.fetch("arm_listener"))[0]["armed"])

    def _session_connected(self, session_id: uuid.UUID) -> None:
        self.wakeup.notify()  # its messages are read from now on

    async def _lease_loop(self) -> None:
        """Keep what is held in memory invisible to others for as long as it is held."""
        period = self.settings.visibility_timeout / 3
        while True:
            await asyncio.sleep(period)
            if not self._inflight:
                continue
            renewing = list(self._inflight.values())
            started = time.monotonic()
            try:
                await self.db.fetch(
                    "extend_leases",
                    {
                        "msg_ids": [j.msg_id for j in renewing],
                        "seconds": self.settings.visibility_timeout,
                    },
                )
                for job in renewing:
                    job.leased_until = started + self.settings.visibility_timeout
            except Exception:  # a lapse here risks duplicates, not loss: keep renewing
                log.exception("renewing the leases of held messages failed")

    async def _drain(self) -> None:
        """At shutdown: lanes finish the send in hand and release the rest; write what was sent
        (letting a write already under way finish: cancelling it would lose its statuses)."""
        if self._lanes:
            await asyncio.gather(*self._lanes.values(), return_exceptions=True)
        while self._sent or self._flush_busy:
            self._flush_wake.set()
            await asyncio.sleep(0.005)
