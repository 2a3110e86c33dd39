"""Dispatch: queue → WhatsApp with per-group FIFO, per-session pacing, retries through the
queue's visibility timeout, and a lease on everything held in memory. Its parts:

- the reader (poller/reader.py) takes what can go now and holds it;
- one lane per group (poller/lanes.py) paces, sends and turns each job into an outcome:
  Sent, Retry, Failed or GiveBack (poller/jobs.py);
- the outcome writer (poller/outcomes.py) writes outcomes in batches and is the only place a
  job stops being held;
- the lease keeper (poller/leases.py) keeps what is held invisible to other pollers.

Delivery is at least once. A message's queue row is archived in the same statement that writes
its `sent` status, so a crash can only repeat a send whose outcome had not been written yet;
everything else is either still leased (and comes back when the lease ends) or final.
"""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from poller.db import Database
from poller.errors import SchemaNotReady
from poller.jobs import Held
from poller.lanes import Lanes
from poller.leases import LeaseKeeper
from poller.metrics import Metrics
from poller.outcomes import OutcomeWriter, Stats
from poller.reader import Reader
from poller.receipts import Receipts
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.wakeup import Wakeup

# The queue functions the named queries call, with the signatures they call them by: the poller
# touches the queue through nothing else.
QUEUE_FUNCTIONS = (
    "private.take_outbound(text, uuid[], integer[], bigint[], integer, integer, double precision)",
    "private.outbound_sent(uuid[], bigint[], text[], timestamptz[])",
    "private.outbound_retry(uuid[], bigint[], text[], double precision[])",
    "private.outbound_fail(uuid[], bigint[], text[])",
    "private.outbound_give_back(uuid[], bigint[], double precision[])",
    "private.outbound_extend(bigint[], double precision)",
    "private.arm_outbound_listener()",
    "private.outbound_backlog(text)",
)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        sessions: SessionManager,
        receipts: Receipts,
        settings: Settings,
        metrics: Metrics,
        turned: Callable[[], None],
        stop: asyncio.Event,
    ) -> None:
        self._db = db
        self.held = Held()
        self.wakeup = Wakeup(self._arm_listener, settings.poll_interval)
        self.writer = OutcomeWriter(db, self.held, self.wakeup, receipts, metrics)
        self.lanes = Lanes(sessions, self.writer, self.wakeup, settings, stop)
        self.reader = Reader(db, sessions, self.held, self.lanes, self.wakeup, settings, turned)
        self.leases = LeaseKeeper(db, self.held, settings.visibility_timeout)
        self._stop = stop
        sessions.on_connected(lambda _: self.wakeup.notify())  # its messages are read now

    @property
    def stats(self) -> Stats:
        return self.writer.stats

    @property
    def inflight(self) -> int:
        return len(self.held)

    async def check_queue_functions(self) -> None:
        rows = await self._db.fetch("outbound_functions", {"signatures": list(QUEUE_FUNCTIONS)})
        if rows:
            raise SchemaNotReady(
                "the database lacks, or does not let this role execute, "
                + ", ".join(r["signature"] for r in rows)
                + ": run wa-poller db bootstrap (or supabase db push) and connect as wa_poller"
            )

    def parts(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The long-running parts, by name, for the daemon to run and watch. The reader ends at
        the stop; the writer and the lease keeper run until cancelled, after `drain`."""
        return {
            "reader": self.reader.run(self._stop),
            "outcomes": self.writer.run(),
            "leases": self.leases.run(),
        }

    async def drain(self) -> None:
        """After the stop and the reader's end: the lanes finish the send in hand and give the
        rest back, and every outcome is written."""
        await self.lanes.drain()
        await self.writer.drain()

    async def _arm_listener(self) -> bool:
        return bool((await self._db.fetch("arm_listener"))[0]["armed"])
