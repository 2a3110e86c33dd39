"""A session worker: one session's client of the real transport (settings.transport), driven by
the poller over stdin and stdout (see poller/transports/worker.py).

    python -m poller.transports.worker_child SESSION_ID

stdin: first the configuration ({"settings", "paired_jid"}), then calls ({"op", "id", ...}: send,
joined_groups). stdout: the sink's events and the calls' replies ({"event", ...}). It stops on
SIGTERM or at the end of stdin (the poller is gone), within STOP_GRACE whatever the client does.
"""

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import uuid
from typing import Any

import orjson

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


class PipeSink:
    """The EventSink of the worker's client: each event a line to the poller."""

    def __init__(self, out: asyncio.WriteTransport) -> None:
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


async def answer(client: SessionClient, sink: PipeSink, call: dict[str, Any]) -> None:
    reply: dict[str, Any] = {"id": call["id"]}
    try:
        if call["op"] == "send":
            message_id = uuid.UUID(call["message_id"])
            reply["result"] = await client.send_text(call["group"], call["text"], message_id)
        else:
            reply["result"] = await client.joined_groups()
    except Exception as exc:
        kind = next((name for name, cls in ERRORS.items() if isinstance(exc, cls)), None)
        if kind is None:  # as the dispatcher does with it in-process: logged, retried
            log.exception("%s failed", call["op"])
            kind, exc = TransientSendError.__name__, f"{type(exc).__name__}: {exc}"
        reply.update(error=kind, message=str(exc))
    sink.send("reply", **reply)


async def serve(session_id: uuid.UUID) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # The channel is a copy of stdout; fd 1 itself goes to stderr, so that whatever else prints
    # there (Go, C libraries) cannot corrupt it.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    out, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, channel)
    line = await reader.readline()
    if not line:
        return  # the poller went away before saying anything
    config = orjson.loads(line)
    settings = Settings(**config["settings"])
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s worker {session_id}: %(name)s: %(message)s",
    )
    transport = make_transport(settings, workers=False)
    sink = PipeSink(out)
    client = sink.client = transport.client(session_id, sink, config["paired_jid"])
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
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
    out.close()


def main() -> None:
    # SIGKILL when the poller dies, even if this process is too stuck to read the end of stdin.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    asyncio.run(serve(uuid.UUID(sys.argv[1])))
    # Go's threads (neonize) must not hold the exit up.
    os._exit(0)


if __name__ == "__main__":
    main()
