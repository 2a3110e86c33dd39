"""WhatsApp through neonize (whatsmeow), with neonize's hazards fenced off:

- a client method called before connect() or after stop() can kill the process (a Go panic):
  every call goes through `_call`, which refuses unless the session is connected;
- connect() blocks until stop(): it runs on a thread of its own, supervised from asyncio;
- handlers run on a Go-owned thread and an exception there vanishes: each one is wrapped, logs,
  and only hands the event to the event loop;
- a connect that never answers (no QR code, no connection within WA_CONNECT_TIMEOUT) or a stop
  that hangs (WA_STOP_TIMEOUT): a watchdog gives up on that client and starts a new one;
- one session's failure stays in that session: each has its own client, thread and supervisor
  (and, through poller/transports/worker.py, its own process: neonize's Go maps take no lock).

Reconnects are ours, not whatsmeow's: a dropped or failed connection is retried after an
exponential backoff with jitter and a cap. Logged out (whatever the reason): the store is
cleared, the session waits for pairing. StreamReplaced (another client took the account): let go.
A temporary ban: not connected (so nothing is taken or attempted for the session) until the ban
ends, then connect again. Client outdated: no reconnect (WhatsApp refuses this version until
neonize is upgraded). Both, and keepalive timeouts, are session events for the admins.
"""

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from poller.backoff import Backoff
from poller.outgoing import OutgoingMessage
from poller.settings import Settings
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
from poller.transports.neonize_messages import NeonizeMedia, send_composing, send_outgoing

log = logging.getLogger(__name__)

# Markers of whatsmeow errors that retrying cannot fix (server error codes and texts).
_PERMANENT = {
    "not-authorized": "our account is not a participant of the group",
    "forbidden": "our account is not a participant of the group",
    "403": "our account is not a participant of the group",
    "item-not-found": "the group does not exist",
    "404": "the group does not exist",
    "not-acceptable": "WhatsApp rejected the message",
    "406": "WhatsApp rejected the message",
}
_NOT_CONNECTED = ("not connected", "client is nil", "doesn't contain a device jid")
# whatsmeow's errors from opening a PostgreSQL store (its driver is lib/pq), and what to do.
_STORE_ERRORS = ("failed to upgrade database", "pq: ")
_STORE_HINTS = {
    "SSL is not enabled on the server": "the server offers no TLS: add sslmode=disable to the "
    "URL (only for a server on this host or a private network)",
    "certificate": "its TLS certificate is not trusted: sslmode=require encrypts without "
    "verifying it",
    "password authentication failed": "wrong user or password",
}


def classify_send_error(message: str) -> Exception:
    """A whatsmeow send error as NotConnected, PermanentSendError or TransientSendError."""
    text = message.lower()
    if any(marker in text for marker in _NOT_CONNECTED):
        return NotConnected(message)
    for marker, meaning in _PERMANENT.items():
        if marker in text:
            return PermanentSendError(f"{meaning} ({message})")
    return TransientSendError(message)


def describe_store_error(message: str, url: str) -> str | None:
    """One line for a PostgreSQL store that cannot be opened (whatsmeow's error is a chain of
    contexts ending in lib/pq's or the dialer's), or None when `message` is about something else."""
    if not any(marker in message for marker in _STORE_ERRORS):
        return None
    cause = message.split("pq: ", 1)[1] if "pq: " in message else message.rsplit(": ", 1)[-1]
    hint = next((h for marker, h in _STORE_HINTS.items() if marker in cause), None)
    where = urlsplit(url)
    return (
        f"cannot open the session store (WA_SESSION_STORE_URL, {where.hostname}:"
        f"{where.port or 5432}): {cause}{f': {hint}' if hint else ''}"
    )


def in_thread(function: Callable[[], Any], name: str) -> "asyncio.Future[Any]":
    """Run a neonize call on a daemon thread of its own. Not the default executor: a call that
    hangs would keep asyncio.run() from ever returning (it waits for the executor's threads)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(future.set_result, function())
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name=f"neonize-{name}", daemon=True).start()
    return future


def jid_string(jid: Any) -> str | None:
    """A neonize JID as 'user@server' (device part dropped), or None when empty."""
    if jid is None or not getattr(jid, "User", "") or not getattr(jid, "Server", ""):
        return None
    return f"{jid.User}@{jid.Server}"


BOT_TAG_VARIABLE = "NEONIZE_BOT_TAG"


class NeonizeTransport(Transport):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: list[NeonizeSession] = []
        self.media = NeonizeMedia(settings)  # attachments, uploaded once for all sessions
        # neonize tags 1:1 messages as a bot's unless this says off. Go reads the environment
        # once, when neonize's library is loaded: so before any import of neonize (which this
        # module does only in its methods), in the poller and in each worker.
        os.environ[BOT_TAG_VARIABLE] = "on" if settings.bot_tag else "off"
        if settings.session_store == "sqlite":
            Path(settings.auth_dir).mkdir(parents=True, exist_ok=True, mode=0o700)

    def store_for(self, session_id: uuid.UUID) -> str:
        """The whatsmeow store of a session: the seed's session-{id} layout under WA_AUTH_DIR,
        or the PostgreSQL store (WA_SESSION_STORE_URL, a role whose tables the API cannot see)."""
        if self.settings.session_store == "postgres":
            if not self.settings.session_store_url:
                raise ValueError("WA_SESSION_STORE=postgres needs WA_SESSION_STORE_URL")
            return self.settings.session_store_url
        return str(Path(self.settings.auth_dir) / f"session-{session_id}.db")

    def client(
        self, session_id: uuid.UUID, sink: EventSink, paired_jid: str | None = None
    ) -> "NeonizeSession":
        session = NeonizeSession(self, session_id, sink, paired_jid)
        self.sessions.append(session)
        return session

    async def close(self) -> None:
        await asyncio.gather(*(session.stop() for session in self.sessions))
        await self.media.aclose()


class NeonizeSession(SessionClient):
    def __init__(
        self,
        transport: NeonizeTransport,
        session_id: uuid.UUID,
        sink: EventSink,
        paired_jid: str | None,
    ) -> None:
        self.transport = transport
        self.settings = transport.settings
        self.session_id = session_id
        self.sink = sink
        self.paired_jid = paired_jid
        self.client: Any = None
        self.attempts = 0  # connection attempts since the last success, for the backoff
        self._connected = False
        self._connect_attempted = False  # get_me() before any connect() is a Go panic
        self._stopping = False
        self._ended: str | None = None  # why this session must not reconnect (logout, replaced)
        self._banned_until: datetime | None = None  # a temporary ban: no connect before it ends
        self._keepalive_failing = False  # a keepalive timeout was reported, not its restore yet
        self._restart = asyncio.Event()
        self._progress = asyncio.Event()  # a QR code or a connection: WhatsApp answered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._backoff = Backoff(self.settings.reconnect_initial, self.settings.reconnect_max)

    @property
    def connected(self) -> bool:
        return self._connected

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"wa-{self.session_id}")

    async def _supervise(self) -> None:
        while not self._stopping and self._ended is None:
            if self._banned_until is not None:
                # The row says banned and until when (the sink heard it): connect at its end.
                until, self._banned_until = self._banned_until, None
                await self._wait((until - datetime.now(UTC)).total_seconds())
                continue
            try:
                error = await self._attempt()
            except Exception as exc:  # a bug, or a store that cannot be opened: this session only
                log.exception("session %s: connection attempt failed", self.session_id)
                error = exc
            self._connected = False
            if self._stopping or self._ended is not None:
                break
            if self._banned_until is not None:
                continue
            self.attempts += 1
            delay = self._backoff.delay(self.attempts)
            self._emit(
                ConnectionState.DISCONNECTED, f"{self._why(error)}; retrying in {delay:.1f}s"
            )
            await self._wait(delay)
        if self._ended is not None:
            await self._clear_store_if_logged_out()

    async def _wait(self, seconds: float) -> None:
        """Sleep, unless a stop, a logout or a ban (which says how long instead) cuts it short."""
        self._restart.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restart.wait(), timeout=max(0.0, seconds))

    def _why(self, error: BaseException | None) -> str:
        if error is None:
            return "connection dropped"
        if self.settings.session_store == "postgres" and self.settings.session_store_url:
            store = describe_store_error(str(error), self.settings.session_store_url)
            if store is not None:
                return store
        return str(error)

    async def _attempt(self) -> BaseException | None:
        """One client, connected until it fails, drops, hangs or is told to stop; returns why
        it ended (None: dropped or stopped)."""
        self._emit(ConnectionState.CONNECTING, None)
        self._restart.clear()
        self._progress.clear()
        self._keepalive_failing = False
        self.client = self.new_client()
        connecting = asyncio.ensure_future(
            in_thread(functools.partial(self._connect, self.client), "connect")
        )
        restart = asyncio.create_task(self._restart.wait())
        progress = asyncio.create_task(self._progress.wait())
        # A connection that never answers: no QR code and no Connected within the timeout.
        await asyncio.wait(
            {connecting, restart, progress},
            timeout=self.settings.connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        hung = not (connecting.done() or restart.done() or progress.done())
        progress.cancel()
        if not hung:
            await asyncio.wait({connecting, restart}, return_when=asyncio.FIRST_COMPLETED)
        restart.cancel()
        # Failed, dropped, hung or told to stop: stop this client before the next one connects
        # (neonize's maps take no lock), which also ends its connect() if that still runs,
        # unless stop() hangs too.
        running = not connecting.done()
        if await self._stop_client(self.client) and running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(connecting), self.settings.stop_timeout)
        if hung:
            return TimeoutError(
                f"no answer from WhatsApp within {self.settings.connect_timeout:g}s"
            )
        if connecting.done() and not connecting.cancelled():
            return connecting.exception()
        return None

    def _connect(self, client: Any) -> None:
        self._connect_attempted = True
        if self.settings.proxy_url:
            from neonize._binder import ProxySettings

            client.connect(ProxySettings(proxy_address=self.settings.proxy_url))
        else:
            client.connect()

    async def _stop_client(self, client: Any) -> bool:
        """client.stop() may hang: give it stop_timeout, then give up on that client."""
        stopping = asyncio.ensure_future(in_thread(client.stop, "stop"))
        try:
            await asyncio.wait_for(asyncio.shield(stopping), self.settings.stop_timeout)
        except TimeoutError:
            log.error(
                "session %s: neonize stop() hung for %.0fs; abandoning that client",
                self.session_id,
                self.settings.stop_timeout,
            )
            return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        self._connected = False
        self._restart.set()
        if self._supervisor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._supervisor), self.settings.stop_timeout + 1
                )

    async def _clear_store_if_logged_out(self) -> None:
        if not (self._ended or "").startswith("logged out"):
            return
        if self.settings.session_store == "sqlite":
            store = Path(self.transport.store_for(self.session_id))
            for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
                path.unlink(missing_ok=True)
        # The PostgreSQL store: whatsmeow deletes the device of a logged-out account itself.
        self.paired_jid = None

    # -- the neonize client ----------------------------------------------------------------

    def new_client(self) -> Any:
        from neonize.client import NewClient
        from neonize.events import (
            ClientOutdatedEv,
            ConnectedEv,
            DisconnectedEv,
            JoinedGroupEv,
            KeepAliveRestoredEv,
            KeepAliveTimeoutEv,
            LoggedOutEv,
            PairStatusEv,
            ReceiptEv,
            StreamReplacedEv,
            TemporaryBanEv,
        )
        from neonize.proto.Neonize_pb2 import GroupInfoEvent
        from neonize.utils.jid import build_jid

        store = self.transport.store_for(self.session_id)
        if self.settings.session_store == "postgres":
            # Several accounts share one store: name ours, or ask for a new device to pair.
            if self.paired_jid:
                user, server = self.paired_jid.split("@", 1)
                client = NewClient(store, jid=build_jid(user, server), uuid=str(self.session_id))
            else:
                client = NewClient(store, uuid=str(self.session_id), new_device=True)
        else:
            client = NewClient(store, uuid=str(self.session_id))
        # neonize stops a client when the collector frees it: Stop(uuid), from whichever thread
        # collects, by a uuid that this session's next client shares. That would end the next
        # client, and it raced the next connect on neonize's unlocked maps ("concurrent map
        # writes" in a worker, once in about 1,250 failed connects). _attempt stops each client.
        client._stop_finalizer.detach()
        # Every handler before connect(): neonize subscribes only to those registered by then.
        client.event.qr(self._guard(self._on_qr))
        client.event(ConnectedEv)(self._guard(self._on_connected))
        client.event(DisconnectedEv)(self._guard(self._on_disconnected))
        client.event(LoggedOutEv)(self._guard(self._on_logged_out))
        client.event(StreamReplacedEv)(self._guard(self._on_stream_replaced))
        client.event(PairStatusEv)(self._guard(self._on_pair_status))
        client.event(ReceiptEv)(self._guard(self._on_receipt))
        client.event(JoinedGroupEv)(self._guard(self._on_group_event))
        client.event(GroupInfoEvent)(self._guard(self._on_group_event))
        client.event(TemporaryBanEv)(self._guard(self._on_temporary_ban))
        client.event(ClientOutdatedEv)(self._guard(self._on_client_outdated))
        client.event(KeepAliveTimeoutEv)(self._guard(self._on_keepalive_timeout))
        client.event(KeepAliveRestoredEv)(self._guard(self._on_keepalive_restored))
        return client

    def _guard(self, handler: Callable[..., None]) -> Callable[..., None]:
        """Handlers run on a Go thread and neonize drops their exceptions: log them here."""

        def guarded(client: Any, event: Any) -> None:
            try:
                handler(client, event)
            except Exception:
                log.exception(
                    "session %s: error handling %s", self.session_id, type(event).__name__
                )

        return guarded

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback` on the event loop (handlers are on a Go thread)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback, *args)

    def _emit(self, state: ConnectionState, reason: str | None) -> None:
        self.sink.connection_changed(self.session_id, state, reason)

    # -- events (Go thread) ----------------------------------------------------------------

    def _on_qr(self, client: Any, data: bytes) -> None:
        self._soon(self._qr_now, client, data.decode())

    def _qr_now(self, client: Any, code: str) -> None:
        if client is self.client:  # not a late event of an abandoned client
            self._progress.set()
            self.sink.qr_code(self.session_id, code)

    def _on_pair_status(self, _client: Any, event: Any) -> None:
        jid = jid_string(event.ID)
        if event.Status == event.SUCCESS and jid:
            self._soon(self.sink.paired, self.session_id, jid, None)

    def _on_connected(self, client: Any, _event: Any) -> None:
        me = client.me  # set by neonize from the Device event that precedes Connected
        own_jid = jid_string(getattr(me, "JID", None)) if me is not None else None
        own_lid = jid_string(getattr(me, "LID", None)) if me is not None else None
        self._soon(self._connected_now, client, own_jid, own_lid)

    def _connected_now(self, client: Any, own_jid: str | None, own_lid: str | None) -> None:
        if client is not self.client or self._stopping or self._ended is not None:
            return  # a late event of an abandoned client must not mark the session connected
        self._progress.set()
        self._connected = True
        self.attempts = 0
        if own_jid:
            self.paired_jid = own_jid
            self.sink.paired(self.session_id, own_jid, own_lid)
        self._emit(ConnectionState.CONNECTED, None)

    def _on_disconnected(self, client: Any, _event: Any) -> None:
        self._soon(self._dropped, client, "connection dropped")

    def _dropped(self, client: Any, reason: str) -> None:
        if client is not self.client:
            return  # an abandoned client's farewell: the current attempt goes on
        self._connected = False
        log.info("session %s: %s", self.session_id, reason)
        # Said at once: ending the client (stop() may take up to stop_timeout) comes first,
        # then the supervisor says when it retries.
        self._emit(ConnectionState.DISCONNECTED, reason)
        self._restart.set()  # our backoff, not whatsmeow's own reconnect loop

    def _on_logged_out(self, _client: Any, event: Any) -> None:
        from neonize.proto.Neonize_pb2 import ConnectFailureReason

        reason = ConnectFailureReason.Name(event.Reason) if event.HasField("Reason") else "UNKNOWN"
        self._soon(self._end, f"logged out: {reason}")

    def _on_stream_replaced(self, _client: Any, _event: Any) -> None:
        self._soon(self._end, "stream replaced: another client took this WhatsApp account")

    def _end(self, why: str) -> None:
        self._ended = why
        self._connected = False
        self._emit(ConnectionState.DISCONNECTED, why)
        if why.startswith("logged out"):
            self.sink.logged_out(self.session_id, why)
        else:
            self.sink.let_go(self.session_id, why)
        self._restart.set()

    def _on_temporary_ban(self, client: Any, event: Any) -> None:
        code = event.TempBanReason.Name(event.Code) if event.HasField("Code") else "UNKNOWN"
        until = datetime.now(UTC) + timedelta(seconds=max(0, event.Expire))
        self._soon(self._banned, client, code, until)

    def _banned(self, client: Any, code: str, until: datetime) -> None:
        if client is not self.client or self._stopping or self._ended is not None:
            return
        reason = f"temporarily banned by WhatsApp ({code}) until {until:%Y-%m-%d %H:%M:%S} UTC"
        log.warning("session %s: %s", self.session_id, reason)
        self._banned_until = until
        self._connected = False
        # Disconnected first, then the event that sets the row's status to banned.
        self._emit(ConnectionState.DISCONNECTED, reason)
        self.sink.session_event(self.session_id, "temporary_ban", reason, until)
        self._restart.set()  # this client ends; the supervisor waits for the ban's end

    def _on_client_outdated(self, client: Any, _event: Any) -> None:
        self._soon(self._outdated, client)

    def _outdated(self, client: Any) -> None:
        if client is not self.client or self._stopping or self._ended is not None:
            return
        reason = "WhatsApp refuses this client as outdated: upgrade neonize, restart the poller"
        log.error("session %s: %s", self.session_id, reason)
        self._ended = reason
        self._connected = False
        self._emit(ConnectionState.DISCONNECTED, reason)
        self.sink.session_event(self.session_id, "client_outdated", reason, None)
        self._restart.set()

    def _on_keepalive_timeout(self, client: Any, event: Any) -> None:
        last = datetime.fromtimestamp(event.LastSuccess, UTC) if event.LastSuccess else None
        self._soon(self._keepalive_timeout, client, event.ErrorCount, last)

    def _keepalive_timeout(self, client: Any, count: int, last: datetime | None) -> None:
        # whatsmeow reports every failed keepalive (about one a 25 s): the first of a run is
        # the event; it reconnects by itself when they last.
        if client is not self.client or self._keepalive_failing:
            return
        self._keepalive_failing = True
        since = f" since {last:%H:%M:%S} UTC" if last else ""
        reason = f"keepalive timeout: no answer from WhatsApp{since} ({count} unanswered)"
        log.warning("session %s: %s", self.session_id, reason)
        self.sink.session_event(self.session_id, "keepalive_timeout", reason, None)

    def _on_keepalive_restored(self, client: Any, _event: Any) -> None:
        self._soon(self._keepalive_restored, client)

    def _keepalive_restored(self, client: Any) -> None:
        if client is not self.client or not self._keepalive_failing:
            return
        self._keepalive_failing = False
        self.sink.session_event(self.session_id, "keepalive_restored", None, None)

    def _on_receipt(self, _client: Any, event: Any) -> None:
        # An unset Type reads as DELIVERED, and neonize leaves types it does not map unset.
        if not event.HasField("Type"):
            return
        if event.Type == event.DELIVERED:
            kind = ReceiptKind.DELIVERED
        elif event.Type in (event.READ, event.PLAYED):
            kind = ReceiptKind.READ
        elif event.Type == event.RETRY:
            kind = ReceiptKind.RETRY
        else:
            return
        at = datetime.fromtimestamp(event.Timestamp, UTC) if event.Timestamp else datetime.now(UTC)
        receipt = Receipt(
            self.session_id,
            tuple(event.MessageIDs),
            kind,
            at,
            participant=jid_string(event.MessageSource.Sender),
        )
        self._soon(self.sink.receipt, receipt)

    def _on_group_event(self, _client: Any, _event: Any) -> None:
        self._soon(self.sink.groups_changed, self.session_id)

    # -- calls -----------------------------------------------------------------------------

    async def _call(self, what: str, function: Callable[[], Any]) -> Any:
        if not self._connected or self.client is None:
            raise NotConnected("session is not connected")
        started = time.monotonic()
        try:
            return await asyncio.wait_for(
                asyncio.shield(in_thread(function, what)), self.settings.send_timeout
            )
        except TimeoutError as exc:
            raise TransientSendError(
                f"{what} timed out after {time.monotonic() - started:.0f}s"
            ) from exc

    async def send(self, message: OutgoingMessage) -> SendResult:
        from neonize.exc import NeonizeError

        try:
            response = await send_outgoing(
                self._call, self.client, message, self.transport.media.cache
            )
        except NeonizeError as exc:
            raise classify_send_error(str(exc)) from exc
        # WhatsApp's acknowledgement time (Unix seconds), when it gives one.
        sent_at = (
            datetime.fromtimestamp(response.Timestamp, UTC)
            if response.Timestamp
            else datetime.now(UTC)
        )
        return SendResult(wa_message_id=response.ID, timestamp=sent_at)

    async def typing(self, group_jid: str) -> None:
        from neonize.exc import NeonizeError

        client = self.client
        try:
            await self._call("typing", lambda: send_composing(client, group_jid))
        except NeonizeError as exc:
            raise classify_send_error(str(exc)) from exc

    async def joined_groups(self) -> list[GroupInfo] | None:
        from neonize.exc import NeonizeError

        client = self.client
        try:
            groups = await self._call("group list", client.get_joined_groups)
        except NeonizeError as exc:
            raise TransientSendError(str(exc)) from exc
        return [group_info(g) for g in groups]

    def own_ids(self) -> list[str]:
        me = self.client.me if self.client is not None else None
        if me is None:
            return [self.paired_jid] if self.paired_jid else []
        return [j for j in (jid_string(me.JID), jid_string(me.LID)) if j]


def group_info(group: Any) -> GroupInfo:
    """neonize's GroupInfo → ours, participants as plain dicts (stored as JSON)."""
    participants = [
        {
            "jid": jid_string(p.JID),
            "lid": jid_string(p.LID),
            "phone_number": jid_string(p.PhoneNumber),
            "is_admin": bool(p.IsAdmin),
            "is_super_admin": bool(p.IsSuperAdmin),
        }
        for p in group.Participants
    ]
    return GroupInfo(
        jid=jid_string(group.JID) or "",
        name=group.GroupName.Name,
        participants=participants,
        announce_only=bool(group.GroupAnnounce.IsAnnounce),
    )
