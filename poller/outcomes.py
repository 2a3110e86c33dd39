"""The outcome writer: the one place a held job is let go.

Lanes hand it their outcomes without waiting; it writes whatever has gathered in one call
(sql/queries/settle.sql: one statement, so one transaction for every kind of outcome), then
lets those jobs go. While a write is in flight the next batch gathers, so batches grow with the
load without a fixed delay. A write that fails (not a lost connection: the database class
retries those) lets its jobs go too: their leases end and the queue offers them again, so a
`Sent` may be sent twice, never lost.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from poller.db import Database
from poller.jobs import Failed, GiveBack, Held, Outcome, Retry, Sent, Why
from poller.metrics import Metrics
from poller.receipts import Receipts
from poller.wakeup import Wakeup

log = logging.getLogger(__name__)


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    set_aside: int = 0  # given back because their session was not sending


class OutcomeWriter:
    def __init__(
        self, db: Database, held: Held, wakeup: Wakeup, receipts: Receipts, metrics: Metrics
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._held = held
        self._wakeup = wakeup
        self._receipts = receipts
        self.stats = Stats()
        self._pending: list[Outcome] = []
        self._wake = asyncio.Event()
        self._writing = False

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._wake.set()

    async def run(self) -> None:
        """Write outcomes as they come, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # lanes that are ready add theirs to this batch
            self._writing = True
            try:
                await self._write()
            except Exception:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled mid-write (the stop's deadline): the pool's error stands in
                    # for the cancellation, which must still end the loop.
                    raise asyncio.CancelledError from None
                log.exception("writing outcomes failed; those messages return to the queue")
            finally:
                self._writing = False

    async def drain(self) -> None:
        """Until everything added has been written (a write under way is let finish: cancelling
        it would lose its statuses)."""
        while self._pending or self._writing:
            self._wake.set()
            await asyncio.sleep(0.005)

    async def _write(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        sent = [o for o in batch if isinstance(o, Sent)]
        retries = [o for o in batch if isinstance(o, Retry)]
        failures = [o for o in batch if isinstance(o, Failed)]
        backs = [o for o in batch if isinstance(o, GiveBack)]
        try:
            [written] = await self._db.fetch(
                "settle",
                {
                    "sent_ids": [o.job.message_id for o in sent],
                    "sent_msg_ids": [o.job.msg_id for o in sent],
                    "wa_message_ids": [o.result.wa_message_id for o in sent],
                    "sent_ats": [o.result.timestamp for o in sent],
                    "retry_ids": [o.job.message_id for o in retries],
                    "retry_msg_ids": [o.job.msg_id for o in retries],
                    "retry_errors": [o.error for o in retries],
                    "retry_delays": [o.delay for o in retries],
                    "failed_ids": [o.job.message_id for o in failures],
                    "failed_msg_ids": [o.job.msg_id for o in failures],
                    "failed_errors": [o.error for o in failures],
                    "back_ids": [o.job.message_id for o in backs],
                    "back_msg_ids": [o.job.msg_id for o in backs],
                    "back_delays": [o.delay for o in backs],
                },
            )
        finally:
            self._held.let_go(o.job for o in batch)
            self._wakeup.notify()  # room to read again
        self.stats.sent += len(sent)
        self.stats.retried += len(retries)
        self.stats.failed += len(failures)
        created = written["sent_created_ats"]
        for o in sent:
            # An edit or a revoke is no message queued: the enqueue → sent metric is not its.
            if o.job.message.amend is None and (at := created.get(str(o.job.message_id))):
                self._metrics.sent(o.job.session_id, datetime.fromisoformat(at))
        for o in retries:
            self._metrics.retried(o.job.session_id)
        for o in failures:
            self._metrics.failed(o.job.session_id)
        self.stats.set_aside += sum(o.why is Why.SESSION_DOWN for o in backs)
        # Becoming visible again notifies nobody: read again when each delay ends.
        for delay in {o.delay for o in (*retries, *backs)}:
            self._wakeup.after(delay)
        if sent:
            self._receipts.retry_unmatched()
