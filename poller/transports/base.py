"""The transport interface: a per-session client that connects, sends messages (text, an
attachment, a reply, mentions: poller/outgoing.py) to a group and reports connection changes and
receipts to an event sink."""

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from poller.errors import PollerError

if TYPE_CHECKING:  # poller.outgoing imports poller.storage, which imports this module
    from poller.outgoing import OutgoingMessage


class SendError(PollerError):
    """A send that WhatsApp did not accept."""


class TransientSendError(SendError):
    """Worth retrying: a timeout, a server hiccup, a rate limit."""


class PermanentSendError(SendError):
    """Retrying cannot help: not a participant, group gone, message rejected."""


class NotConnected(SendError):
    """The session is not connected; nothing was attempted (no attempt is counted)."""


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class ReceiptKind(StrEnum):
    DELIVERED = "delivered"
    READ = "read"
    RETRY = "retry"  # the participant could not decrypt the message and asked for it again


@dataclass(frozen=True)
class SendResult:
    wa_message_id: str
    timestamp: datetime


@dataclass(frozen=True)
class Receipt:
    session_id: uuid.UUID
    wa_message_ids: tuple[str, ...]
    kind: ReceiptKind
    timestamp: datetime
    participant: str | None = None


@dataclass(frozen=True)
class GroupInfo:
    """A joined group. Each participant: jid, lid, phone_number, is_admin, is_super_admin."""

    jid: str
    name: str
    participants: list[dict[str, object]] = field(default_factory=list)
    announce_only: bool = False


class EventSink(Protocol):
    """Where a client reports what happens; called on the event loop's thread."""

    def connection_changed(
        self, session_id: uuid.UUID, state: ConnectionState, reason: str | None
    ) -> None: ...

    def receipt(self, receipt: Receipt) -> None: ...

    def groups_changed(self, session_id: uuid.UUID) -> None:
        """We joined or left a group, or its participants changed: sync it soon."""

    def qr_code(self, session_id: uuid.UUID, code: str) -> None:
        """A new pairing QR code (WhatsApp rotates them): show it to the admin."""

    def paired(self, session_id: uuid.UUID, jid: str, lid: str | None) -> None:
        """The account is paired (or reconnected): our own JID and LID, no device part."""

    def logged_out(self, session_id: uuid.UUID, reason: str) -> None:
        """Logged out, for whatever reason: the store is cleared; pairing again is needed."""

    def let_go(self, session_id: uuid.UUID, reason: str) -> None:
        """Another client took the account (StreamReplaced): stop holding this session."""

    def session_event(
        self, session_id: uuid.UUID, kind: str, reason: str | None, until: datetime | None
    ) -> None:
        """What WhatsApp said about the session, for admins (public.session_events): kind
        temporary_ban (`until` its end), client_outdated, keepalive_timeout or
        keepalive_restored."""


class SessionClient(ABC):
    """One WhatsApp account (a `whatsapp_sessions` row)."""

    session_id: uuid.UUID

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    async def start(self) -> None:
        """Begin connecting (and keep reconnecting); returns at once."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def send(self, message: "OutgoingMessage") -> SendResult:
        """Send; raises NotConnected, TransientSendError or PermanentSendError.
        `message.message_id` is ours; WhatsApp chooses its own id."""

    async def send_text(self, group_jid: str, text: str, message_id: uuid.UUID) -> SendResult:
        """A plain text send() (for tools and tests)."""
        from poller.outgoing import OutgoingMessage

        return await self.send(OutgoingMessage(group_jid, text, message_id))

    async def typing(self, group_jid: str) -> None:
        """Show "typing…" in the group (WhatsApp's composing presence) until the next send;
        by default nothing (a transport without presence)."""
        return None

    @abstractmethod
    async def joined_groups(self) -> list[GroupInfo] | None:
        """The groups the account is in; None when this transport cannot tell (no sync)."""

    @abstractmethod
    def own_ids(self) -> list[str]:
        """Our own account's phone JID and LID (either may carry a device part)."""


class Transport(ABC):
    @abstractmethod
    def client(
        self, session_id: uuid.UUID, sink: EventSink, paired_jid: str | None = None
    ) -> SessionClient:
        """A client for one session; `paired_jid` is its account once paired (from the table)."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the transport holds (files, threads)."""
