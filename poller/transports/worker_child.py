"""A session worker: one session's client of the real transport (settings.transport), driven by
the poller through a socket (see poller/transports/worker.py), one JSON object a line.

From the poller: calls ({"op": "send" | "typing" | "joined_groups", "id", ...}). To it: the
sink's events and the calls' replies ({"event", ...}). It stops on SIGTERM or at the end of the
socket (the poller is gone), within STOP_GRACE whatever the client does.
"""

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import threading
import uuid
from datetime import datetime
from typing import Any

import orjson

from poller.outgoing import OutgoingMessage
from poller.settings import Settings
from poller.transports import make_transport
from poller.transports.base import (
    ConnectionState,
    Receipt,
    SessionClient,
    TransientSendError,
)
from poller.transports.worker import ERRORS, LINE_LIMIT, STOP_GRACE

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


class PipeSink:
    """The EventSink of the worker's client: each event a line to the poller."""

    def __init__(self, out: asyncio.StreamWriter) -> None:
        self.out = out
        self.client: SessionClient | None = None

    def send(self, event: str, **fields: Any) -> None:
        self.out.write(orjson.dumps({"event": event, **fields}) + b"\n")

    def _own_ids(self) -> None:
        # own_ids() is synchronous in the poller: it keeps the last list sent.
        if self.client is not None:
            self.send("own_ids", ids=self.client.own_ids())

    def connection_changed(
        self, session_id: uuid.UUID, state: ConnectionState, reason: str | None
    ) -> None:
        self._own_ids()
        self.send("state", state=str(state), reason=reason)

    def receipt(self, receipt: Receipt) -> None:
        self.send(
            "receipt",
            wa_message_ids=receipt.wa_message_ids,
            kind=str(receipt.kind),
            timestamp=receipt.timestamp,
            participant=receipt.participant,
        )

    def groups_changed(self, session_id: uuid.UUID) -> None:
        self.send("groups_changed")

    def qr_code(self, session_id: uuid.UUID, code: str) -> None:
        self.send("qr_code", code=code)

    def paired(self, session_id: uuid.UUID, jid: str, lid: str | None) -> None:
        self.send("paired", jid=jid, lid=lid)
        self._own_ids()

    def logged_out(self, session_id: uuid.UUID, reason: str) -> None:
        self.send("logged_out", reason=reason)

    def let_go(self, session_id: uuid.UUID, reason: str) -> None:
        self.send("let_go", reason=reason)

    def session_event(
        self, session_id: uuid.UUID, kind: str, reason: str | None, until: datetime | None
    ) -> None:
        self.send("session_event", kind=kind, reason=reason, until=until)


async def answer(client: SessionClient, sink: PipeSink, call: dict[str, Any]) -> None:
    reply: dict[str, Any] = {"id": call["id"]}
    try:
        if call["op"] == "send":
            reply["result"] = await client.send(OutgoingMessage.from_wire(call["message"]))
        elif call["op"] == "typing":
            reply["result"] = await client.typing(call["group"])
        else:
            reply["result"] = await client.joined_groups()
    except Exception as exc:
        kind = next((name for name, cls in ERRORS.items() if isinstance(exc, cls)), None)
        if kind is None:  # as the dispatcher does with it in-process: logged, retried
            log.exception("%s failed", call["op"])
            kind, exc = TransientSendError.__name__, f"{type(exc).__name__}: {exc}"
        reply.update(error=kind, message=str(exc))
    sink.send("reply", **reply)


async def serve(
    session_id: uuid.UUID, settings: Settings, paired_jid: str | None, sock: socket.socket
) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
    transport = make_transport(settings, workers=False)
    sink = PipeSink(writer)
    client = sink.client = transport.client(session_id, sink, paired_jid)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await client.start()
    calls: set[asyncio.Task[None]] = set()

    async def read_calls() -> None:
        while line := await reader.readline():
            task = asyncio.create_task(answer(client, sink, orjson.loads(line)))
            calls.add(task)
            task.add_done_callback(calls.discard)

    reading = asyncio.create_task(read_calls())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    # A client whose stop hangs (a Go call that never returns) must not keep the worker alive.
    threading.Timer(STOP_GRACE - 1, os._exit, (1,)).start()
    await client.stop()
    await transport.close()
    writer.close()


def main(
    session_id: uuid.UUID, settings: Settings, paired_jid: str | None, sock: socket.socket
) -> None:
    """The worker process (forked by multiprocessing's fork server)."""
    # The fork server's objects out of the collector's reach: a collection writes to every object
    # it visits, which would copy their pages into each worker (11 MB more each, measured).
    gc.freeze()
    os.setsid()  # a Ctrl-C in a terminal is the poller's to handle
    libc = ctypes.CDLL(None, use_errno=True)
    # SIGKILL when the fork server exits (it does when the poller does), even if this process
    # is too stuck to see the end of its socket.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_NAME, f"wa-{session_id}"[:15].encode(), 0, 0, 0)  # ps tells them apart
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s worker {session_id}: %(name)s: %(message)s",
    )
    asyncio.run(serve(session_id, settings, paired_jid, sock))
    # Go's threads (neonize) must not hold the exit up.
    os._exit(0)
