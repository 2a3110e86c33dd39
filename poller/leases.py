"""The lease keeper: keeps the queue rows of held jobs invisible to other pollers for as long as
they are held (a read leases a job for WA_VISIBILITY_TIMEOUT; a send may wait longer for its
session's pacing)."""

import asyncio
import logging
import time

from poller.db import Database
from poller.jobs import Held

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, db: Database, held: Held, visibility_timeout: float) -> None:
        self._db = db
        self._held = held
        self._vt = visibility_timeout

    async def run(self) -> None:
        """Renew every third of the visibility timeout, until cancelled."""
        while True:
            await asyncio.sleep(self._vt / 3)
            renewing = self._held.jobs()
            if not renewing:
                continue
            started = time.monotonic()
            try:
                await self._db.fetch(
                    "extend_leases",
                    {"msg_ids": [j.msg_id for j in renewing], "seconds": self._vt},
                )
            except Exception:  # a lapse here risks duplicates, not loss: keep renewing
                log.exception("renewing the leases of held messages failed")
                continue
            for job in renewing:
                job.leased_until = started + self._vt
