"""Each session's client in a worker process of its own (poller/transports/worker_child.py).

neonize 0.5.2 keeps every client in one Go map without a lock: two sessions in one process can
kill it ("fatal error: concurrent map writes", which Python cannot catch). One process, so one Go
runtime, per session keeps such a crash to that session.

The parent's WorkerClient is the session's SessionClient: it starts the worker, relays calls to
it and its events to the sink, and supervises it. A worker that dies, whatever the signal or exit
status, is restarted after the reconnect backoff; the session's row says why, and the sends it had
not answered fail as transient (the dispatcher retries them; an answered send already has its
SendResult). stop() ends the worker with SIGTERM, then SIGKILL after STOP_GRACE.

Workers come from multiprocessing's fork server, which imports once what every worker needs:
forked from it, the workers share those pages (with 20 sessions a worker comes to 32 MB PSS; each
a fresh interpreter, to 60 MB, over the 50 MB budget). It must not import neonize: loading it
starts Go's runtime, whose threads a fork does not copy. The channel is a socket pair, one JSON
object a line (orjson) through asyncio streams: the standard library, readable, no pickling after
the start; the worker learns that the poller is gone from the end of it (and PR_SET_PDEATHSIG,
from the fork server's exit, which follows the poller's).
"""

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import uuid
from datetime import datetime
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

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
    SendError,
    SendResult,
    SessionClient,
    TransientSendError,
    Transport,
)

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds a worker has to stop its client before SIGKILL
LINE_LIMIT = 64 * 1024 * 1024  # the longest line either side reads: a big group list
REPLY_MARGIN = 5.0  # beyond WA_SEND_TIMEOUT (the worker's own bound on a call): a hung worker
FORKSERVER = multiprocessing.get_context("forkserver")
# The worker's modules, and the Python libraries neonize imports (the heaviest), without neonize.
PRELOAD = [
    "poller.transports.worker_child",
    "poller.transports.neonize",
    "poller.transports.neonize_messages",
    "poller.transports.simulated",
    "google.protobuf.message",
    "linkpreview",
    "magic",
    "phonenumbers",
    "PIL.Image",
    "segno",
]
ERRORS: dict[str, type[SendError]] = {
    cls.__name__: cls for cls in (NotConnected, TransientSendError, PermanentSendError)
}


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
        return f"signal {-returncode}"
    return f"exit status {returncode}"


class WorkerTransport(Transport):
    """settings.transport's clients, each in a worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clients: list[WorkerClient] = []
        FORKSERVER.set_forkserver_preload(PRELOAD)

    def client(
        self, session_id: uuid.UUID, sink: EventSink, paired_jid: str | None = None
    ) -> "WorkerClient":
        client = WorkerClient(self.settings, session_id, sink, paired_jid)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        await asyncio.gather(*(client.stop() for client in self.clients))


class WorkerClient(SessionClient):
    def __init__(
        self, settings: Settings, session_id: uuid.UUID, sink: EventSink, paired_jid: str | None
    ) -> None:
        self.settings = settings
        self._worker_settings = settings.model_copy(update={"database_url": None})
        self.session_id = session_id
        self.sink = sink
        self.paired_jid = paired_jid
        self.restarts = 0  # workers that died, for the metrics
        self._process: BaseProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected = False
        self._own_ids: list[str] = []
        self._ended = False  # logged out or let go: the client would not reconnect, nor do we
        self._stopping = False
        self._stopped = asyncio.Event()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()
        self._supervisor: asyncio.Task[None] | None = None
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self._attempts = 0  # deaths since the worker last connected, for the backoff

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"worker-{self.session_id}")

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                how = await self._run_worker()
            except Exception as exc:  # could not start it, or a bug here: this session only
                log.exception("session %s: worker failed", self.session_id)
                how = f"{type(exc).__name__}: {exc}"
            if self._stopping or self._ended:
                return
            self._attempts += 1
            self.restarts += 1
            delay = self._backoff.delay(self._attempts)
            reason = f"worker died: {how}; restarting in {delay:.1f} s"
            log.warning("session %s: %s", self.session_id, reason)
            self.sink.connection_changed(self.session_id, ConnectionState.DISCONNECTED, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)

    async def _run_worker(self) -> str:
        """One worker, from its start to its end; returns how it ended."""
        from poller.transports.worker_child import main

        ours, theirs = socket.socketpair()
        process = FORKSERVER.Process(
            target=main,
            # The database URL stays here: a worker needs no database.
            args=(self.session_id, self._worker_settings, self.paired_jid, theirs),
            name=f"worker-{self.session_id}",
            daemon=True,  # multiprocessing ends it too if the poller exits without stop()
        )
        try:
            # Blocks until the fork server has forked it (the first time: started and loaded).
            await asyncio.to_thread(process.start)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        log.info("session %s: worker started (pid %s)", self.session_id, process.pid)
        self._process = process
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=LINE_LIMIT)
        self._writer = writer
        try:
            if self._stopping:  # stop() came while it was starting
                process.terminate()
            while line := await reader.readline():
                self._handle(orjson.loads(line))
            return describe_exit(await _exit_code(process))
        finally:
            if process.exitcode is None:  # we failed, not the worker: end it
                process.kill()
            writer.close()
            self._process, self._writer = None, None
            self._connected = False
            gone = TransientSendError(f"worker died (pid {process.pid}) before answering")
            for call in self._calls.values():
                if not call.done():
                    call.set_exception(gone)
            self._calls.clear()

    def _handle(self, message: dict[str, Any]) -> None:
        event = message["event"]
        sid = self.session_id
        if event == "reply":
            call = self._calls.pop(message["id"], None)
            if call is not None and not call.done():
                if "error" in message:
                    call.set_exception(ERRORS[message["error"]](message["message"]))
                else:
                    call.set_result(message["result"])
        elif event == "state":
            state = ConnectionState(message["state"])
            self._connected = state is ConnectionState.CONNECTED
            if self._connected:
                self._attempts = 0
            self.sink.connection_changed(sid, state, message["reason"])
        elif event == "own_ids":
            self._own_ids = message["ids"]
        elif event == "receipt":
            self.sink.receipt(
                Receipt(
                    sid,
                    tuple(message["wa_message_ids"]),
                    ReceiptKind(message["kind"]),
                    datetime.fromisoformat(message["timestamp"]),
                    message["participant"],
                )
            )
        elif event == "groups_changed":
            self.sink.groups_changed(sid)
        elif event == "qr_code":
            self.sink.qr_code(sid, message["code"])
        elif event == "paired":
            self.paired_jid = message["jid"]  # a restarted worker names its account
            self.sink.paired(sid, message["jid"], message["lid"])
        elif event == "logged_out":
            self._ended = True
            self.sink.logged_out(sid, message["reason"])
        elif event == "let_go":
            self._ended = True
            self.sink.let_go(sid, message["reason"])
        elif event == "session_event":
            until = message["until"]
            self.sink.session_event(
                sid,
                message["kind"],
                message["reason"],
                datetime.fromisoformat(until) if until else None,
            )

    async def _call(self, op: str, **args: Any) -> Any:
        if not self._connected or self._writer is None:
            raise NotConnected("session is not connected")
        call_id = next(self._call_ids)
        call = asyncio.get_running_loop().create_future()
        self._calls[call_id] = call
        self._writer.write(orjson.dumps({"op": op, "id": call_id, **args}) + b"\n")
        try:
            return await asyncio.wait_for(call, self.settings.send_timeout + REPLY_MARGIN)
        except TimeoutError as exc:
            raise TransientSendError(f"worker did not answer {op}") from exc
        finally:
            self._calls.pop(call_id, None)

    async def send(self, message: OutgoingMessage) -> SendResult:
        result = await self._call("send", message=message.wire())
        return SendResult(result["wa_message_id"], datetime.fromisoformat(result["timestamp"]))

    async def typing(self, group_jid: str) -> None:
        await self._call("typing", group=group_jid)

    async def joined_groups(self) -> list[GroupInfo] | None:
        groups = await self._call("joined_groups")
        return None if groups is None else [GroupInfo(**group) for group in groups]

    def own_ids(self) -> list[str]:
        return self._own_ids

    async def stop(self) -> None:
        self._stopping = True
        self._connected = False
        self._stopped.set()
        if self._supervisor is None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._supervisor), STOP_GRACE)
        except TimeoutError:
            log.error("session %s: worker ignored SIGTERM; killing it", self.session_id)
            self._signal(signal.SIGKILL)
            await self._supervisor
        except asyncio.CancelledError:  # the poller's stop ran out of time: no orphan
            self._signal(signal.SIGKILL)
            raise

    def _signal(self, sig: signal.Signals) -> None:
        process = self._process
        if process is not None and process.pid is not None and process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)


async def _exit_code(process: BaseProcess) -> int:
    """The worker's exit code (negative: the signal), once the fork server has reaped it."""
    loop = asyncio.get_running_loop()
    reaped = loop.create_future()
    loop.add_reader(process.sentinel, lambda: reaped.done() or reaped.set_result(None))
    try:
        await reaped
    finally:
        loop.remove_reader(process.sentinel)
    process.join()
    assert process.exitcode is not None
    return process.exitcode
