"""Scenarios that drive the neonize transport with real neonize objects, run by
tests/test_neonize.py in a child process (a Go panic or a hung Go thread must not take the test
run down with it). Prints one JSON object with what was observed.

    python -m tests.neonize_scenarios NAME [url]

NAME: events, no-network, logout, silent-server, dropped, postgres-store (with its url), or
alerts and store-no-tls (with the poller's database url).
"""

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from poller.db import Database
from poller.dispatcher import Dispatcher
from poller.metrics import Metrics
from poller.outgoing import OutgoingMessage
from poller.receipts import Receipts
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.transports.base import (
    ConnectionState,
    EventSink,
    NotConnected,
    Receipt,
    SendResult,
    TransientSendError,
)
from poller.transports.neonize import NeonizeSession, NeonizeTransport


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.started = time.monotonic()

    def _add(self, *call: Any) -> None:
        self.calls.append([round(time.monotonic() - self.started, 3), *call])

    def connection_changed(
        self, session_id: uuid.UUID, state: ConnectionState, reason: str | None
    ) -> None:
        self._add("state", str(state), reason)

    def receipt(self, receipt: Receipt) -> None:
        self._add("receipt", str(receipt.kind), list(receipt.wa_message_ids), receipt.participant)

    def groups_changed(self, session_id: uuid.UUID) -> None:
        self._add("groups_changed")

    def qr_code(self, session_id: uuid.UUID, code: str) -> None:
        self._add("qr", code)

    def paired(self, session_id: uuid.UUID, jid: str, lid: str | None) -> None:
        self._add("paired", jid, lid)

    def logged_out(self, session_id: uuid.UUID, reason: str) -> None:
        self._add("logged_out", reason)

    def let_go(self, session_id: uuid.UUID, reason: str) -> None:
        self._add("let_go", reason)

    def session_event(
        self, session_id: uuid.UUID, kind: str, reason: str | None, until: Any
    ) -> None:
        self._add("session_event", kind, reason, until is not None)


def dispatch(client: Any, code: int, event: Any) -> None:
    """Push an event through neonize's own dispatch path, from a thread as Go does."""
    data = event.SerializePartialToString()
    buffer = ctypes.create_string_buffer(data, len(data))

    def run() -> None:
        client.event.execute(client.uuid, ctypes.addressof(buffer), len(data), code)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


def settings(tmp: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "transport": "neonize",
        "auth_dir": Path(tmp) / "auth_info",
        "reconnect_initial": 0.2,
        "reconnect_max": 1.0,
        "stop_timeout": 5.0,
        "send_timeout": 5.0,
    }
    return Settings(**{**values, **overrides})


async def events(tmp: str) -> dict[str, Any]:
    from neonize.events import (
        EVENT_TO_INT,
        ConnectedEv,
        JoinedGroupEv,
        LoggedOutEv,
        ReceiptEv,
        StreamReplacedEv,
    )
    from neonize.proto.Neonize_pb2 import (
        JID,
        Connected,
        ConnectFailureReason,
        Device,
        JoinedGroup,
        LoggedOut,
        MessageSource,
        StreamReplaced,
    )
    from neonize.proto.Neonize_pb2 import Receipt as ReceiptProto

    sink = RecordingSink()
    transport = NeonizeTransport(settings(tmp))
    session = transport.client(uuid.uuid4(), sink)
    session._loop = asyncio.get_running_loop()
    client = session.client = session.new_client()
    out: dict[str, Any] = {}

    async def settle() -> None:
        await asyncio.sleep(0.05)

    # Before any connection: refused without touching Go (which would panic on some calls).
    try:
        await session.send_text("120363025246125888@g.us", "merhaba", uuid.uuid4())
    except NotConnected as exc:
        out["send_before_connect"] = f"NotConnected: {exc}"

    client.event._qr(client, b"2@qr-one,abc,def")
    client.event._qr(client, b"2@qr-two,abc,def")
    me = Device(
        JID=JID(User="905551112233", Server="s.whatsapp.net", Device=12),
        LID=JID(User="88001234567890", Server="lid", Device=12),
    )
    dispatch(client, 0, me)
    dispatch(client, EVENT_TO_INT[ConnectedEv], Connected(status=True))
    await settle()
    out["connected"] = session.connected
    out["own_ids"] = session.own_ids()

    # A Connected from a client that is not the current one (abandoned) changes nothing.
    stale = session.new_client()
    session._connected = False
    dispatch(stale, EVENT_TO_INT[ConnectedEv], Connected(status=True))
    await settle()
    out["connected_by_stale_client"] = session.connected
    dispatch(client, EVENT_TO_INT[ConnectedEv], Connected(status=True))
    await settle()

    group = JID(User="120363025246125888", Server="g.us")
    sender = JID(User="905557654321", Server="s.whatsapp.net")
    for kind in (
        ReceiptProto.DELIVERED,
        ReceiptProto.READ,
        ReceiptProto.PLAYED,
        ReceiptProto.READ_SELF,
        None,
    ):
        receipt = ReceiptProto(
            MessageSource=MessageSource(Chat=group, Sender=sender, IsGroup=True),
            MessageIDs=[f"3EB0{kind}A", f"3EB0{kind}B"],
            Timestamp=1_700_000_000,
        )
        if kind is not None:
            receipt.Type = kind
        dispatch(client, EVENT_TO_INT[ReceiptEv], receipt)
    dispatch(client, EVENT_TO_INT[JoinedGroupEv], JoinedGroup(Reason="invite"))
    await settle()

    # "Connected" by an event only: the Go client has no connection, and must not crash us.
    try:
        await session.send_text("120363025246125888@g.us", "merhaba", uuid.uuid4())
    except (NotConnected, TransientSendError) as exc:
        out["send_without_socket"] = f"{type(exc).__name__}: {exc}"

    # A handler that fails is logged, not lost silently and not fatal.
    original = session._soon
    session._soon = lambda *a: (_ for _ in ()).throw(RuntimeError("handler bug"))  # type: ignore
    dispatch(client, EVENT_TO_INT[JoinedGroupEv], JoinedGroup(Reason="invite"))
    session._soon = original  # type: ignore[method-assign]
    out["survived_handler_error"] = True

    dispatch(client, EVENT_TO_INT[StreamReplacedEv], StreamReplaced())
    dispatch(
        client,
        EVENT_TO_INT[LoggedOutEv],
        LoggedOut(OnConnect=False, Reason=ConnectFailureReason.TEMP_BANNED),
    )
    await settle()
    out["connected_after_logout"] = session.connected
    out["calls"] = [c[1:] for c in sink.calls]
    return out


async def no_network(tmp: str) -> dict[str, Any]:
    sink = RecordingSink()
    transport = NeonizeTransport(settings(tmp))
    session = transport.client(uuid.uuid4(), sink)
    await session.start()
    await asyncio.sleep(4.0)
    stop_started = time.monotonic()
    await session.stop()
    return {
        "calls": sink.calls,
        "stop_seconds": round(time.monotonic() - stop_started, 2),
        "store_exists": Path(transport.store_for(session.session_id)).exists(),
    }


async def logout(tmp: str) -> dict[str, Any]:
    from neonize.events import EVENT_TO_INT, LoggedOutEv
    from neonize.proto.Neonize_pb2 import ConnectFailureReason, LoggedOut

    sink = RecordingSink()
    transport = NeonizeTransport(settings(tmp, reconnect_initial=0.5, reconnect_max=0.5))
    session = transport.client(uuid.uuid4(), sink)
    store = Path(transport.store_for(session.session_id))
    await session.start()
    while not store.exists():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    dispatch(
        session.client,
        EVENT_TO_INT[LoggedOutEv],
        LoggedOut(OnConnect=True, Reason=ConnectFailureReason.LOGGED_OUT),
    )
    await asyncio.sleep(2.0)  # long enough for several reconnects, were there any
    assert session._supervisor is not None
    out = {
        "supervisor_done": session._supervisor.done(),
        "store_exists": store.exists(),
        "calls": [c[1:] for c in sink.calls],
    }
    await session.stop()
    return out


async def silent_proxy() -> tuple[asyncio.Server, str, list[asyncio.StreamWriter]]:
    """A proxy that accepts connections and never answers (a connect() through it hangs):
    the server, its URL, and the connections it has accepted."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keep it open, say nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", accepted


async def silent_server(tmp: str) -> dict[str, Any]:
    """Through a proxy that never answers, the connect hangs."""
    server, proxy_url, accepted = await silent_proxy()
    sink = RecordingSink()
    transport = NeonizeTransport(
        settings(
            tmp,
            proxy_url=proxy_url,
            connect_timeout=1.5,
            stop_timeout=1.0,
            reconnect_initial=0.3,
            reconnect_max=0.5,
        )
    )
    session = transport.client(uuid.uuid4(), sink)
    await session.start()
    await asyncio.sleep(6.0)
    stop_started = time.monotonic()
    await session.stop()
    stop_seconds = time.monotonic() - stop_started
    server.close()
    return {
        "calls": [c[1:] for c in sink.calls],
        "accepted": len(accepted),
        "stop_seconds": round(stop_seconds, 2),
    }


async def dropped(tmp: str) -> dict[str, Any]:
    """A live connection that drops: the supervisor's client (its connect() held open by a proxy
    that never answers) is told Connected, then Disconnected, both through neonize's dispatch."""
    from neonize.events import EVENT_TO_INT, ConnectedEv, DisconnectedEv
    from neonize.proto.Neonize_pb2 import JID, Connected, Device, Disconnected

    server, proxy_url, accepted = await silent_proxy()
    sink = RecordingSink()
    transport = NeonizeTransport(
        settings(
            tmp,
            proxy_url=proxy_url,
            connect_timeout=30.0,
            stop_timeout=1.0,
            reconnect_initial=0.5,
            reconnect_max=1.0,
        )
    )
    session = transport.client(uuid.uuid4(), sink)
    await session.start()
    while not accepted:  # connect() is under way
        await asyncio.sleep(0.05)
    live = session.client
    me = Device(JID=JID(User="905551112233", Server="s.whatsapp.net", Device=3))
    dispatch(live, 0, me)
    dispatch(live, EVENT_TO_INT[ConnectedEv], Connected(status=True))
    await asyncio.sleep(0.2)
    out: dict[str, Any] = {"connected": session.connected}
    dispatch(live, EVENT_TO_INT[DisconnectedEv], Disconnected())
    await asyncio.sleep(0.1)
    out["connected_after_drop"] = session.connected
    try:
        await session.send_text("120363025246125888@g.us", "merhaba", uuid.uuid4())
    except NotConnected as exc:
        out["send_after_drop"] = f"NotConnected: {exc}"
    deadline = time.monotonic() + 10
    while session.client is live and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the backoff, then a new client
    out["new_client"] = session.client is not live
    # The dropped client's late events change nothing.
    dispatch(live, EVENT_TO_INT[ConnectedEv], Connected(status=True))
    dispatch(live, EVENT_TO_INT[DisconnectedEv], Disconnected())
    await asyncio.sleep(0.3)
    out["connected_by_dropped_client"] = session.connected
    await session.stop()
    server.close()
    out["calls"] = sink.calls
    out["accepted"] = len(accepted)
    return out


async def postgres_store(tmp: str, url: str) -> dict[str, Any]:
    sink = RecordingSink()
    transport = NeonizeTransport(settings(tmp, session_store="postgres", session_store_url=url))
    session = transport.client(uuid.uuid4(), sink)
    await session.start()
    deadline = time.monotonic() + 20
    while not any(c[1] == "state" and c[2] == "disconnected" for c in sink.calls):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    await session.stop()
    return {"calls": [c[1:] for c in sink.calls]}


class WhatsAppStandIn(NeonizeSession):
    """The real adapter (handlers, supervisor, neonize's event dispatch) with WhatsApp's side
    played here: connect() dispatches what `script` says for each attempt, then holds until the
    client is stopped; a send answers at once. Nothing reaches Go's connection code."""

    # Per connect, the last one repeating: a 2 s temporary ban, then a connection.
    script = ("ban", "connect")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connects = 0
        self.sent = 0
        self._held: dict[int, threading.Event] = {}

    def _connect(self, client: Any) -> None:
        from neonize.events import EVENT_TO_INT, ConnectedEv, TemporaryBanEv
        from neonize.proto.Neonize_pb2 import JID, Connected, Device, TemporaryBan

        self.connects += 1
        held = self._held[id(client)] = threading.Event()
        if self.script[min(self.connects, len(self.script)) - 1] == "ban":
            ban = TemporaryBan(Code=TemporaryBan.SEND_TO_TOO_MANY_PEOPLE, Expire=2)
            dispatch(client, EVENT_TO_INT[TemporaryBanEv], ban)
        else:
            me = Device(JID=JID(User="905551112233", Server="s.whatsapp.net", Device=4))
            dispatch(client, 0, me)
            dispatch(client, EVENT_TO_INT[ConnectedEv], Connected(status=True))
        held.wait()

    async def _stop_client(self, client: Any) -> bool:
        held = self._held.get(id(client))
        if held is not None:
            held.set()
        return True

    async def send(self, message: OutgoingMessage) -> SendResult:
        await self._call("send", lambda: None)  # refused unless connected, as a real send is
        self.sent += 1
        return SendResult(f"3EB0ALERT{self.sent:04d}", datetime.now(UTC))


class StandInTransport(NeonizeTransport):
    def client(
        self, session_id: uuid.UUID, sink: EventSink, paired_jid: str | None = None
    ) -> NeonizeSession:
        session = WhatsAppStandIn(self, session_id, sink, paired_jid)
        self.sessions.append(session)
        return session


async def mini_poller(url: str, transport: NeonizeTransport, scene: Any) -> dict[str, Any]:
    """The daemon's parts (sessions, receipts, the dispatcher) on the database at `url`, around
    `scene(sessions, client, exposition)`, which returns what it saw; the metrics' exposition
    after the stop is added."""
    from prometheus_client.exposition import generate_latest

    settings = transport.settings
    metrics = Metrics()
    db = Database(url)
    await db.open()
    stop = asyncio.Event()
    receipts = Receipts(db, metrics=metrics)
    sessions = SessionManager(db, transport, receipts, settings, metrics)
    dispatcher = Dispatcher(db, sessions, receipts, settings, metrics, lambda: None, stop)
    await sessions.heartbeat()
    (client,) = sessions.clients.values()
    parts = [asyncio.create_task(part) for part in dispatcher.parts().values()] + [
        asyncio.create_task(sessions.run(stop)),
        asyncio.create_task(receipts.run(stop)),
    ]
    try:
        out = await scene(sessions, client, lambda: generate_latest(metrics.registry).decode())
    finally:
        stop.set()
        await asyncio.sleep(0.3)  # the last session writes and receipts
        for task in parts:
            task.cancel()
        await asyncio.gather(*parts, return_exceptions=True)
        await receipts.flush()
        await sessions.stop()
        await db.close()
    out["metrics"] = generate_latest(metrics.registry).decode()
    return out


def poller_settings(tmp: str, url: str, **overrides: Any) -> Settings:
    return settings(
        tmp,
        database_url=url,
        poller_id="alerts-test",
        rate_per_minute=0,
        poll_interval=0.2,
        heartbeat_interval=0.5,
        **overrides,
    )


async def alerts(tmp: str, url: str) -> dict[str, Any]:
    """A temporary ban at the first connect, then a connection: the sends wait for the ban's
    end; retry receipts from two participants; keepalive timeouts and their restore; at last
    WhatsApp says the client is outdated."""
    from neonize.events import (
        EVENT_TO_INT,
        ClientOutdatedEv,
        DisconnectedEv,
        KeepAliveRestoredEv,
        KeepAliveTimeoutEv,
        ReceiptEv,
    )
    from neonize.proto.Neonize_pb2 import (
        JID,
        ClientOutdated,
        Disconnected,
        KeepAliveRestored,
        KeepAliveTimeout,
        MessageSource,
    )
    from neonize.proto.Neonize_pb2 import Receipt as ReceiptProto

    check = psycopg_connect(url)

    def messages() -> list[list[Any]]:
        return [
            list(r)
            for r in check.execute(
                "select status::text, attempts, wa_message_id from messages order by created_at"
            ).fetchall()
        ]

    async def scene(sessions: SessionManager, client: Any, exposition: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        started = time.monotonic()
        while client.connects < 1 or client.connected:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the ban lasts 2 s: a second into it
        out["banned_connected"] = sessions.connected_ids()
        out["banned_row"] = list(
            check.execute("select status::text, status_reason from whatsapp_sessions").fetchone()
        )
        out["banned_messages"] = messages()
        while not all(m[0] == "sent" for m in messages()):
            if time.monotonic() - started > 30:
                break
            await asyncio.sleep(0.1)
        out["sent_after"] = round(time.monotonic() - started, 1)
        out["sent_messages"] = messages()
        out["connects"] = client.connects

        group = JID(User="120363000000000000", Server="g.us")
        wa_ids = [m[2] for m in out["sent_messages"]]
        for user, kind in (
            ("905557654321", ReceiptProto.RETRY),
            ("905551234567", ReceiptProto.RETRY),
            ("905557654321", ReceiptProto.RETRY),
            ("905550000000", ReceiptProto.DELIVERED),
        ):
            sender = JID(User=user, Server="s.whatsapp.net", Device=2)
            receipt = ReceiptProto(
                MessageSource=MessageSource(Chat=group, Sender=sender, IsGroup=True),
                MessageIDs=wa_ids[:1],
                Timestamp=int(time.time()),
                Type=kind,
            )
            dispatch(client.client, EVENT_TO_INT[ReceiptEv], receipt)
        # A drop: the adapter's backoff, then a connection again (a reconnect for the metrics).
        dropped = client.client
        dispatch(dropped, EVENT_TO_INT[DisconnectedEv], Disconnected())
        while client.client is dropped or not client.connected:
            await asyncio.sleep(0.05)
        for count in (1, 2):
            timeout = KeepAliveTimeout(ErrorCount=count, LastSuccess=int(time.time()) - 30)
            dispatch(client.client, EVENT_TO_INT[KeepAliveTimeoutEv], timeout)
        await asyncio.sleep(0.3)
        out["keepalive_row"] = list(
            check.execute("select status::text, status_reason from whatsapp_sessions").fetchone()
        )
        dispatch(client.client, EVENT_TO_INT[KeepAliveRestoredEv], KeepAliveRestored())
        await asyncio.sleep(0.3)
        out["restored_row"] = list(
            check.execute("select status::text, status_reason from whatsapp_sessions").fetchone()
        )
        dispatch(client.client, EVENT_TO_INT[ClientOutdatedEv], ClientOutdated())
        await asyncio.sleep(1.0)  # long enough for reconnects, were there any
        out["outdated_connected"] = client.connected
        out["outdated_supervisor_done"] = client._supervisor.done()
        out["final_connects"] = client.connects
        out["outdated_row"] = list(
            check.execute(
                "select status::text, status_reason, last_event from whatsapp_sessions"
            ).fetchone()
        )
        out["metrics_outdated"] = exposition()
        return out

    try:
        return await mini_poller(url, StandInTransport(poller_settings(tmp, url)), scene)
    finally:
        check.close()


async def store_no_tls(tmp: str, url: str) -> dict[str, Any]:
    """WA_SESSION_STORE_URL on a server that offers no TLS, without sslmode in the URL: what the
    session row says."""

    async def no_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readexactly(8)  # SSLRequest
            writer.write(b"N")  # as PostgreSQL without ssl = on answers
            await writer.drain()
            await reader.read()

    server = await asyncio.start_server(no_tls, "127.0.0.1", 0)
    store = f"postgres://wa_session_store:x@127.0.0.1:{server.sockets[0].getsockname()[1]}/db"
    check = psycopg_connect(url)

    async def scene(_sessions: SessionManager, _client: Any, _exposition: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        reason = None
        while time.monotonic() < deadline:
            reason = check.execute("select status_reason from whatsapp_sessions").fetchone()[0]
            if reason and "retrying" in reason:
                break
            await asyncio.sleep(0.1)
        return {"reason": reason, "port": server.sockets[0].getsockname()[1]}

    transport = NeonizeTransport(
        poller_settings(tmp, url, session_store="postgres", session_store_url=store)
    )
    try:
        return await mini_poller(url, transport, scene)
    finally:
        check.close()
        server.close()


def psycopg_connect(url: str) -> Any:
    """A connection of the scenario's own to look at the tables (as the poller may)."""
    import psycopg

    return psycopg.connect(url, autocommit=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    scenario = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        if scenario == "events":
            result = asyncio.run(events(tmp))
        elif scenario == "no-network":
            result = asyncio.run(no_network(tmp))
        elif scenario == "logout":
            result = asyncio.run(logout(tmp))
        elif scenario == "silent-server":
            result = asyncio.run(silent_server(tmp))
        elif scenario == "dropped":
            result = asyncio.run(dropped(tmp))
        elif scenario == "alerts":
            result = asyncio.run(alerts(tmp, sys.argv[2]))
        elif scenario == "store-no-tls":
            result = asyncio.run(store_no_tls(tmp, sys.argv[2]))
        else:
            result = asyncio.run(postgres_store(tmp, sys.argv[2]))
    print(json.dumps(result), flush=True)
    # neonize's connect() threads are not daemons: leave without waiting for Go.
    os._exit(0)


if __name__ == "__main__":
    main()
