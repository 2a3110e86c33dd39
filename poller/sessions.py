"""The WhatsApp sessions this poller holds: one transport client per `whatsapp_sessions` row
whose lease it owns, its connection state mirrored into the table, and a pacing bucket per
session. It is also the transports' event sink.

Leases: every heartbeat renews the leases this poller holds (and drops a session whose lease
another poller took over), then compares what it holds with its share of the sessions among
the live pollers: it takes free or expired sessions up to its share, and hands one back when it
holds more (a new poller joined). A clean stop hands everything back at once; a crash leaves the
leases to expire (WA_LEASE_TTL), after which the other pollers take the sessions over.

Session events (a temporary ban, client outdated, a logout, keepalive timeouts) go to the admins'
log, public.session_events, and onto the session row; the metrics follow every change of state.
"""

import asyncio
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from poller.db import Database
from poller.metrics import Metrics
from poller.ratelimit import TokenBucket
from poller.receipts import Receipts
from poller.settings import Settings
from poller.tasks import background
from poller.transports.base import (
    ConnectionState,
    Receipt,
    ReceiptKind,
    SessionClient,
    Transport,
)

log = logging.getLogger(__name__)


class SessionManager:
    def __init__(
        self,
        db: Database,
        transport: Transport,
        receipts: Receipts,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.transport = transport
        self.receipts = receipts
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.poller_id = settings.poller_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.clients: dict[uuid.UUID, SessionClient] = {}
        self.limiters: dict[uuid.UUID, TokenBucket] = {}
        self._on_connected: list[Callable[[uuid.UUID], None]] = []
        self._on_groups_changed: list[Callable[[uuid.UUID], None]] = []
        # Session table writes, in the order the events happened.
        self._writes: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
        self._ended: dict[uuid.UUID, datetime] = {}  # clients that will not reconnect
        self._connected_once: set[uuid.UUID] = set()  # a CONNECTED after the first: a reconnect
        self._restarts: dict[uuid.UUID, int] = {}  # each client's worker restarts, as counted

    def on_connected(self, callback: Callable[[uuid.UUID], None]) -> None:
        self._on_connected.append(callback)

    def on_groups_changed(self, callback: Callable[[uuid.UUID], None]) -> None:
        """Called on a group event and on every connect (a sync is due then too)."""
        self._on_groups_changed.append(callback)

    def connected_ids(self) -> list[uuid.UUID]:
        return [sid for sid, client in self.clients.items() if client.connected]

    def is_connected(self, session_id: uuid.UUID | None) -> bool:
        return self.connected_client(session_id) is not None

    def connected_client(self, session_id: uuid.UUID | None) -> SessionClient | None:
        """The session's client if this poller holds the session and it is connected now."""
        client = self.clients.get(session_id) if session_id else None
        return client if client is not None and client.connected else None

    # EventSink
    def connection_changed(
        self, session_id: uuid.UUID, state: ConnectionState, reason: str | None
    ) -> None:
        log.info("session %s %s%s", session_id, state, f" ({reason})" if reason else "")
        self._write("set_session_status", session_id, status=str(state), reason=reason)
        self.metrics.session_state(session_id, str(state))
        # A WorkerClient counts its worker's restarts and says so with a state change.
        restarts = getattr(self.clients.get(session_id), "restarts", 0)
        for _ in range(restarts - self._restarts.get(session_id, 0)):
            self.metrics.worker_restarted(session_id)
        self._restarts[session_id] = restarts
        if state is ConnectionState.CONNECTED:
            if session_id in self._connected_once:
                self.metrics.reconnected(session_id)
            self._connected_once.add(session_id)
            for callback in self._on_connected:
                callback(session_id)
            self.groups_changed(session_id)

    def receipt(self, receipt: Receipt) -> None:
        if receipt.kind is ReceiptKind.RETRY:
            self.metrics.retry_receipt(receipt.session_id)
        self.receipts.add(receipt)

    def groups_changed(self, session_id: uuid.UUID) -> None:
        for callback in self._on_groups_changed:
            callback(session_id)

    def qr_code(self, session_id: uuid.UUID, code: str) -> None:
        log.info("session %s: new QR code to scan", session_id)
        self._write("session_qr", session_id, code=code)
        self.metrics.session_state(session_id, "scanning")

    def paired(self, session_id: uuid.UUID, jid: str, lid: str | None) -> None:
        self._write("session_paired", session_id, jid=jid, lid=lid)

    def logged_out(self, session_id: uuid.UUID, reason: str) -> None:
        log.warning("session %s: %s; waiting to be paired again", session_id, reason)
        self._ended[session_id] = datetime.now(UTC)
        self._write("session_logged_out", session_id, reason=reason)
        self.session_event(session_id, "logged_out", reason, None)

    def let_go(self, session_id: uuid.UUID, reason: str) -> None:
        # Like a logout, without losing the keys: the lease is kept (so no poller of ours starts
        # a client that would fight the other one) and the client stays stopped until an admin
        # asks for pairing again (`wa-poller pair`).
        log.warning("session %s: %s; letting go of it until paired again", session_id, reason)
        self._ended[session_id] = datetime.now(UTC)
        client = self.clients.get(session_id)
        if client is not None:
            background(client.stop(), f"let-go-{session_id}")

    def session_event(
        self, session_id: uuid.UUID, kind: str, reason: str | None, until: datetime | None
    ) -> None:
        self._write("session_event", session_id, kind=kind, reason=reason, until=until)
        if kind == "temporary_ban":
            self.metrics.session_state(session_id, "banned")
        elif kind == "client_outdated":
            # The client does not reconnect; a pairing request (or a restart) starts it again.
            self._ended[session_id] = datetime.now(UTC)
            self.metrics.session_state(session_id, "outdated")

    def _write(self, query: str, session_id: uuid.UUID, **params: object) -> None:
        self._writes.put_nowait((query, {"id": session_id, "me": self.poller_id, **params}))

    # Leases
    async def heartbeat(self) -> None:
        """Renew, then take or hand back sessions to hold this poller's share."""
        me, ttl = self.poller_id, self.settings.lease_ttl
        await self.db.execute(
            "poller_heartbeat",
            {"me": me, "hostname": socket.gethostname(), "pid": os.getpid(), "ttl": ttl},
        )
        rows = {r["id"]: r for r in await self.db.fetch("leases_renew", {"me": me, "ttl": ttl})}
        for session_id in [s for s in self.clients if s not in rows]:
            log.warning("session %s: lease lost to another poller; letting go", session_id)
            await self._drop(session_id)
        for session_id, row in sorted(rows.items()):
            ended = self._ended.get(session_id)
            requested = row["pair_requested_at"]
            if ended is not None and requested is not None and requested > ended:
                log.info("session %s: pairing requested; starting its client", session_id)
                await self._drop(session_id)
            if session_id not in self.clients:
                # Held under our id but not running: a restart with a stable WA_POLLER_ID, or
                # a pairing request after a logout.
                await self._hold(session_id, row["wa_jid"])
        share = (await self.db.fetch("leases_share", {"ttl": ttl}))[0]["share"]
        if len(self.clients) < share:
            claimed = await self.db.fetch(
                "leases_claim", {"me": me, "ttl": ttl, "count": share - len(self.clients)}
            )
            for row in claimed:
                await self._hold(row["id"], row["wa_jid"])
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

    async def _hold(self, session_id: uuid.UUID, paired_jid: str | None) -> None:
        log.info("session %s: lease taken by %s", session_id, self.poller_id)
        self.limiters[session_id] = TokenBucket(
            self.settings.rate_per_minute,
            self.settings.rate_burst,
            self.settings.rate_jitter,
            seed=f"{self.settings.sim_seed}:{session_id}",
        )
        client = self.transport.client(session_id, self, paired_jid)
        self.clients[session_id] = client
        await client.start()

    async def _drop(self, session_id: uuid.UUID) -> None:
        self._ended.pop(session_id, None)
        self._connected_once.discard(session_id)
        self._restarts.pop(session_id, None)
        limiter = self.limiters.pop(session_id, None)
        if limiter is not None:
            limiter.close()  # a lane waiting for its next send gives its jobs back at once
        client = self.clients.pop(session_id, None)
        if client is not None:
            await client.stop()
            self.metrics.session_released(session_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeats, and status changes written in order."""
        writer = asyncio.create_task(self._write_in_order(), name="session-writes")
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_interval)
                except TimeoutError:
                    try:
                        await self.heartbeat()
                    except Exception:  # the next beat tries again; leases last WA_LEASE_TTL
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise asyncio.CancelledError from None  # see OutcomeWriter.run
                        log.exception("heartbeat failed")
        finally:
            writer.cancel()

    async def _write_in_order(self) -> None:
        while True:
            query, params = await self._writes.get()
            try:
                await self.db.execute(query, params)
            except Exception:
                log.exception("writing session state (%s) failed", query)

    async def stop(self) -> None:
        """Disconnect, record it, and hand every session back for another poller to take."""
        held = list(self.clients)
        await asyncio.gather(*(self._drop(session_id) for session_id in held))
        for session_id in held:
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
