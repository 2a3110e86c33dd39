"""The WhatsApp sessions this poller holds: one transport client per `whatsapp_sessions` row,
its connection state mirrored into the table, a heartbeat in `updated_at`, and a pacing bucket
per session. It is also the transports' event sink."""

import asyncio
import logging
import uuid
from collections.abc import Callable

from poller.db import Database
from poller.ratelimit import TokenBucket
from poller.receipts import Receipts
from poller.settings import Settings
from poller.transports.base import ConnectionState, Receipt, SessionClient, Transport

log = logging.getLogger(__name__)


class SessionManager:
    def __init__(
        self, db: Database, transport: Transport, receipts: Receipts, settings: Settings
    ) -> None:
        self.db = db
        self.transport = transport
        self.receipts = receipts
        self.settings = settings
        self.clients: dict[uuid.UUID, SessionClient] = {}
        self.limiters: dict[uuid.UUID, TokenBucket] = {}
        self._on_connected: list[Callable[[uuid.UUID], None]] = []
        self._status_writes: asyncio.Queue[tuple[uuid.UUID, ConnectionState, str | None]] = (
            asyncio.Queue()
        )

    def on_connected(self, callback: Callable[[uuid.UUID], None]) -> None:
        self._on_connected.append(callback)

    def connected_ids(self) -> list[uuid.UUID]:
        return [sid for sid, client in self.clients.items() if client.connected]

    def is_connected(self, session_id: uuid.UUID | None) -> bool:
        client = self.clients.get(session_id) if session_id else None
        return client is not None and client.connected

    # EventSink
    def connection_changed(
        self, session_id: uuid.UUID, state: ConnectionState, reason: str | None
    ) -> None:
        log.info("session %s %s%s", session_id, state, f" ({reason})" if reason else "")
        self._status_writes.put_nowait((session_id, state, reason))
        if state is ConnectionState.CONNECTED:
            for callback in self._on_connected:
                callback(session_id)

    def receipt(self, receipt: Receipt) -> None:
        self.receipts.add(receipt)

    async def refresh(self) -> None:
        """Start a client for every session row not held yet."""
        for row in await self.db.fetch("list_sessions"):
            session_id = row["id"]
            if session_id in self.clients:
                continue
            self.limiters[session_id] = TokenBucket(
                self.settings.rate_per_minute,
                self.settings.rate_burst,
                self.settings.rate_jitter,
                seed=f"{self.settings.sim_seed}:{session_id}",
            )
            client = self.transport.client(session_id, self)
            self.clients[session_id] = client
            await client.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Write status changes in order, beat the heartbeat, pick up new sessions."""
        writer = asyncio.create_task(self._write_statuses(), name="session-status")
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_interval)
                except TimeoutError:
                    await self.refresh()
                    if self.clients:
                        await self.db.execute("heartbeat", {"ids": list(self.clients)})
        finally:
            writer.cancel()

    async def _write_statuses(self) -> None:
        while True:
            session_id, state, reason = await self._status_writes.get()
            await self.db.execute(
                "set_session_status", {"id": session_id, "status": str(state), "reason": reason}
            )

    async def stop(self) -> None:
        for session_id, client in self.clients.items():
            await client.stop()
            await self.db.execute(
                "set_session_status",
                {"id": session_id, "status": "disconnected", "reason": "poller stopped"},
            )
