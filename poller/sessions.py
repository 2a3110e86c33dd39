"""The WhatsApp sessions this poller holds: one transport client per `whatsapp_sessions` row
whose lease it owns, its connection state mirrored into the table, and a pacing bucket per
session. It is also the transports' event sink.

Leases: every heartbeat renews the leases this poller holds (and drops a session whose lease
another poller took over), then compares what it holds with its share of the sessions among
the live pollers: it takes free or expired sessions up to its share, and hands one back when it
holds more (a new poller joined). A clean stop hands everything back at once; a crash leaves the
leases to expire (WA_LEASE_TTL), after which the other pollers take the sessions over.
"""

import asyncio
import logging
import os
import secrets
import socket
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
        self.poller_id = settings.poller_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.clients: dict[uuid.UUID, SessionClient] = {}
        self.limiters: dict[uuid.UUID, TokenBucket] = {}
        self._on_connected: list[Callable[[uuid.UUID], None]] = []
        self._on_groups_changed: list[Callable[[uuid.UUID], None]] = []
        self._status_writes: asyncio.Queue[tuple[uuid.UUID, ConnectionState, str | None]] = (
            asyncio.Queue()
        )

    def on_connected(self, callback: Callable[[uuid.UUID], None]) -> None:
        self._on_connected.append(callback)

    def on_groups_changed(self, callback: Callable[[uuid.UUID], None]) -> None:
        """Called on a group event and on every connect (a sync is due then too)."""
        self._on_groups_changed.append(callback)

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
            self.groups_changed(session_id)

    def receipt(self, receipt: Receipt) -> None:
        self.receipts.add(receipt)

    def groups_changed(self, session_id: uuid.UUID) -> None:
        for callback in self._on_groups_changed:
            callback(session_id)

    # Leases
    async def heartbeat(self) -> None:
        """Renew, then take or hand back sessions to hold this poller's share."""
        me, ttl = self.poller_id, self.settings.lease_ttl
        await self.db.execute(
            "poller_heartbeat",
            {"me": me, "hostname": socket.gethostname(), "pid": os.getpid(), "ttl": ttl},
        )
        held = {row["id"] for row in await self.db.fetch("leases_renew", {"me": me, "ttl": ttl})}
        for session_id in [s for s in self.clients if s not in held]:
            log.warning("session %s: lease lost to another poller; letting go", session_id)
            await self._drop(session_id)
        for session_id in sorted(held - set(self.clients)):
            # Held under our id but not running: we restarted with a stable WA_POLLER_ID.
            await self._hold(session_id)
        share = (await self.db.fetch("leases_share", {"ttl": ttl}))[0]["share"]
        if len(self.clients) < share:
            claimed = await self.db.fetch(
                "leases_claim", {"me": me, "ttl": ttl, "count": share - len(self.clients)}
            )
            for row in claimed:
                await self._hold(row["id"])
        elif len(self.clients) > share:
            # One at a time, so that pollers joining together do not hand sessions back and forth.
            session_id = sorted(self.clients)[-1]
            log.info(
                "session %s: handing back (holding %d, share %d)",
                session_id,
                len(self.clients),
                share,
            )
            await self._drop(session_id)
            await self.db.execute("lease_release", {"id": session_id, "me": me})

    async def _hold(self, session_id: uuid.UUID) -> None:
        log.info("session %s: lease taken by %s", session_id, self.poller_id)
        self.limiters[session_id] = TokenBucket(
            self.settings.rate_per_minute,
            self.settings.rate_burst,
            self.settings.rate_jitter,
            seed=f"{self.settings.sim_seed}:{session_id}",
        )
        client = self.transport.client(session_id, self)
        self.clients[session_id] = client
        await client.start()

    async def _drop(self, session_id: uuid.UUID) -> None:
        client = self.clients.pop(session_id)
        await client.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeats, and status changes written in order."""
        writer = asyncio.create_task(self._write_statuses(), name="session-status")
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_interval)
                except TimeoutError:
                    await self.heartbeat()
        finally:
            writer.cancel()

    async def _write_statuses(self) -> None:
        while True:
            session_id, state, reason = await self._status_writes.get()
            await self.db.execute(
                "set_session_status",
                {"id": session_id, "status": str(state), "reason": reason, "me": self.poller_id},
            )

    async def stop(self) -> None:
        """Disconnect, record it, and hand every session back for another poller to take."""
        for session_id in list(self.clients):
            await self._drop(session_id)
            await self.db.execute(
                "set_session_status",
                {
                    "id": session_id,
                    "status": "disconnected",
                    "reason": "poller stopped",
                    "me": self.poller_id,
                },
            )
        await self.db.execute("poller_leave", {"me": self.poller_id})
