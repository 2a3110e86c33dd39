"""Delivered and read receipts → messages.status, forward only (read never returns to
delivered); retry receipts (a participant could not decrypt) → a count per message and
participant. A receipt can overtake the write of the `sent` status it follows, so receipts whose
WhatsApp id is not in the table yet are kept and tried again for a while."""

import asyncio
import logging
import time
from dataclasses import replace

from poller.db import Database
from poller.metrics import Metrics
from poller.transports.base import Receipt, ReceiptKind

log = logging.getLogger(__name__)

_KEEP_UNMATCHED = 120.0  # seconds a receipt waits for its message's `sent` write


class Receipts:
    def __init__(
        self, db: Database, flush_interval: float = 0.05, metrics: Metrics | None = None
    ) -> None:
        self.db = db
        self.flush_interval = flush_interval
        self.metrics = metrics or Metrics()
        self._pending: list[tuple[float, Receipt]] = []
        self._wake = asyncio.Event()

    def add(self, receipt: Receipt) -> None:
        self._pending.append((time.monotonic(), receipt))
        self._wake.set()

    def retry_unmatched(self) -> None:
        """Called after `sent` statuses were written: held receipts may match now."""
        if self._pending:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                continue
            self._wake.clear()
            await asyncio.sleep(self.flush_interval)  # gather a few
            try:
                await self.flush()
            except Exception:  # this batch is lost to the log; statuses stay at `sent`
                log.exception("applying receipts failed")

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        now = time.monotonic()
        keep: list[tuple[float, Receipt]] = []
        for kind in ReceiptKind:
            items = [(t, r) for t, r in batch if r.kind is kind]
            if not items:
                continue
            rows = [
                (wa_id, r.timestamp, r.participant) for _, r in items for wa_id in r.wa_message_ids
            ]
            params = {
                "wa_message_ids": [x[0] for x in rows],
                "ats": [x[1] for x in rows],
                "participants": [x[2] for x in rows],
            }
            if kind is ReceiptKind.RETRY:
                found = await self.db.fetch("apply_retry_receipts", params)
            else:
                found = await self.db.fetch("apply_receipts", {**params, "kind": str(kind)})
                for row in found:
                    if row["sent_at"] is not None:
                        self.metrics.receipt(str(kind), row["sent_at"], row["at"])
            matched = {row["wa_message_id"] for row in found}
            for received, receipt in items:
                missing = tuple(w for w in receipt.wa_message_ids if w not in matched)
                if missing and now - received < _KEEP_UNMATCHED:
                    keep.append((received, replace(receipt, wa_message_ids=missing)))
                elif missing:
                    log.info("dropping %s receipt for unknown message(s) %s", kind, missing)
        self._pending.extend(keep)
