"""Scenarios that drive the neonize transport with real neonize objects, run by
tests/test_neonize.py in a child process (a Go panic or a hung Go thread must not take the test
run down with it). Prints one JSON object with what was observed.

    python -m tests.neonize_scenarios NAME [url]

NAME: events, no-network, logout, silent-server, dropped or postgres-store (with its url).
"""

import asyncio
import ctypes
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from poller.settings import Settings
from poller.transports.base import ConnectionState, NotConnected, Receipt, TransientSendError
from poller.transports.neonize import NeonizeTransport


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
        else:
            result = asyncio.run(postgres_store(tmp, sys.argv[2]))
    print(json.dumps(result), flush=True)
    # neonize's connect() threads are not daemons: leave without waiting for Go.
    os._exit(0)


if __name__ == "__main__":
    main()
