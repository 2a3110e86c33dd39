"""A deterministic stand-in for WhatsApp: send latency, failures (transient or permanent) from a
seeded generator, delivered and read receipts after set delays, disconnects on demand (a file
named `disconnected`, or `disconnected-<session id>`, in the control folder), one transient
failure of a message on demand (a file `fail-<message id>` there, used up by that failure), and
a configurable group list. Attachments are fetched from Storage and "uploaded" (their size and
SHA-256 taken) once per message, as the real transport does.

Every accepted send is appended to a JSON-lines log with one unbuffered write, so the log holds
exactly what "WhatsApp" accepted even when the poller is killed a moment later: the message's
kind (text, image, document), its text or caption, the quoted WhatsApp id, the mentions and the
attachment's name, type, size and digest; an edit or a revoke as kind "edit" / "revoke" with
the WhatsApp id it changes (`target`) and, for an edit, the new text. A "typing…" presence is
logged as its own line.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from poller.outgoing import Amend, OutgoingMessage
from poller.settings import Settings
from poller.storage import MediaCache, StorageFetcher
from poller.transports.base import (
    ConnectionState,
    EventSink,
    GroupInfo,
    NotConnected,
    PermanentSendError,
    Receipt,
    ReceiptKind,
    SendResult,
    SessionClient,
    TransientSendError,
    Transport,
)

log = logging.getLogger(__name__)

_CONTROL_POLL = 0.1  # seconds between looks at the control folder


class SimulatedTransport(Transport):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._log_fd: int | None = None
        if settings.sim_log is not None:
            self._log_fd = os.open(settings.sim_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.groups: dict[str, GroupInfo] | None = None
        self.load_groups()
        self.storage = StorageFetcher(settings)
        self.media: MediaCache[dict[str, object]] = MediaCache(self.storage.fetch)

    def load_groups(self) -> None:
        """(Re)read the group list; the file may change while the poller runs."""
        path = self.settings.sim_groups_file
        if path is None:
            return
        raw = orjson.loads(Path(path).read_bytes())
        self.groups = {
            g["jid"]: GroupInfo(
                jid=g["jid"],
                name=g.get("name", g["jid"]),
                participants=g.get("participants", []),
                announce_only=bool(g.get("announce_only", False)),
            )
            for g in raw
        }

    def client(
        self, session_id: uuid.UUID, sink: EventSink, paired_jid: str | None = None
    ) -> "SimulatedClient":
        return SimulatedClient(self, session_id, sink)

    def record(self, entry: dict[str, object]) -> None:
        if self._log_fd is not None:
            os.write(self._log_fd, (json.dumps(entry) + "\n").encode())

    async def close(self) -> None:
        await self.storage.aclose()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


class SimulatedClient(SessionClient):
    def __init__(
        self, transport: SimulatedTransport, session_id: uuid.UUID, sink: EventSink
    ) -> None:
        self.transport = transport
        self.settings = transport.settings
        self.session_id = session_id
        self.sink = sink
        self._rng = random.Random(f"{self.settings.sim_seed}:{session_id}")
        self._connected = False
        self._watcher: asyncio.Task[None] | None = None
        self._receipts: set[asyncio.TimerHandle] = set()

    @property
    def connected(self) -> bool:
        return self._connected

    def _offline_requested(self) -> bool:
        control = self.settings.sim_control_dir
        if control is None:
            return False
        return (Path(control) / "disconnected").exists() or (
            Path(control) / f"disconnected-{self.session_id}"
        ).exists()

    def _set(self, state: ConnectionState, reason: str | None) -> None:
        self._connected = state is ConnectionState.CONNECTED
        self.sink.connection_changed(self.session_id, state, reason)

    async def start(self) -> None:
        self._set(ConnectionState.CONNECTING, None)
        self._watcher = asyncio.create_task(self._watch(), name=f"sim-watch-{self.session_id}")

    async def _watch(self) -> None:
        while True:
            offline = self._offline_requested()
            if offline and self._connected:
                self._set(ConnectionState.DISCONNECTED, "simulated disconnect")
            elif not offline and not self._connected:
                self._set(ConnectionState.CONNECTED, None)
            await asyncio.sleep(_CONTROL_POLL)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for handle in self._receipts:
            handle.cancel()
        self._connected = False

    async def typing(self, group_jid: str) -> None:
        if not self._connected:
            raise NotConnected("session is not connected")
        self.transport.record(
            {
                "t": time.time(),
                "session": str(self.session_id),
                "group": group_jid,
                "presence": "composing",
            }
        )

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not self._connected:
            raise NotConnected("session is not connected")
        group_jid = message.group_jid
        groups = self.transport.groups
        if groups is not None and group_jid not in groups:
            raise PermanentSendError(f"group {group_jid} not found")
        media = None
        if message.attachment is not None:
            media = await self.transport.media.media_for(
                message.message_id, message.attachment, _upload
            )
        fails = self._rng.random() < self.settings.sim_failure_rate
        if self.settings.sim_latency_ms:
            await asyncio.sleep(self.settings.sim_latency_ms / 1000)
        if not self._connected:  # dropped before WhatsApp took it: nothing went out
            raise NotConnected("connection lost before the send completed")
        if self._fail_requested(message.message_id):
            raise TransientSendError("simulated timeout (requested)")
        if fails:
            if self.settings.sim_failure_kind == "permanent":
                raise PermanentSendError("simulated rejection")
            raise TransientSendError("simulated timeout")
        wa_id = f"3EB0{self._rng.getrandbits(64):016X}"
        now = datetime.now(UTC)
        if message.amend is not None:  # no receipts: WhatsApp acknowledges the change only
            self._record_amend(message, message.amend, wa_id)
            return SendResult(wa_message_id=wa_id, timestamp=now)
        attachment = message.attachment
        self.transport.record(
            {
                "t": time.time(),
                "session": str(self.session_id),
                "group": group_jid,
                "message_id": str(message.message_id),
                "wa_message_id": wa_id,
                "kind": attachment.kind if attachment else "text",
                "content": message.content,
                "quoted": message.reply_to.wa_message_id if message.reply_to else None,
                "mentions": list(message.mentions),
                "attachment": None
                if attachment is None or media is None
                else {"name": attachment.file_name, "mime_type": attachment.mime_type, **media},
            }
        )
        if self.settings.sim_receipts:
            self._schedule(wa_id, ReceiptKind.DELIVERED, self.settings.sim_delivered_after_ms)
            if self.settings.sim_read_after_ms:
                self._schedule(wa_id, ReceiptKind.READ, self.settings.sim_read_after_ms)
        return SendResult(wa_message_id=wa_id, timestamp=now)

    def _record_amend(self, message: OutgoingMessage, amend: Amend, wa_id: str) -> None:
        self.transport.record(
            {
                "t": time.time(),
                "session": str(self.session_id),
                "group": message.group_jid,
                "message_id": str(message.message_id),
                "edit_id": str(amend.edit_id),
                "wa_message_id": wa_id,
                "kind": amend.kind,
                "target": amend.wa_message_id,
                "content": message.content if amend.kind == "edit" else None,
                "sender": amend.sender,
            }
        )

    def _fail_requested(self, message_id: uuid.UUID) -> bool:
        control = self.settings.sim_control_dir
        if control is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            (Path(control) / f"fail-{message_id}").unlink()
            return True
        return False

    def _schedule(self, wa_id: str, kind: ReceiptKind, after_ms: float) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._receipts.discard(handle)
            receipt = Receipt(self.session_id, (wa_id,), kind, datetime.now(UTC))
            self.sink.receipt(receipt)

        handle = loop.call_later(after_ms / 1000, fire)
        self._receipts.add(handle)

    def own_ids(self) -> list[str]:
        return [self.settings.sim_own_jid]

    async def joined_groups(self) -> list[GroupInfo] | None:
        if not self._connected:
            raise NotConnected("session is not connected")
        if self.transport.groups is None:
            return None  # no group list configured: every JID is accepted, nothing to sync
        self.transport.load_groups()
        return list(self.transport.groups.values())


async def _upload(data: bytes) -> dict[str, object]:
    """The simulated upload of an attachment: what WhatsApp would be sent, measured, and an id
    of its own (sends that share an upload show the same)."""
    return {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "upload": uuid.uuid4().hex,
    }
