"""Each session's client in a worker process of its own (poller/transports/worker_child.py).

neonize 0.5.2 keeps every client in one Go map without a lock: two sessions in one process can
kill it ("fatal error: concurrent map writes", which Python cannot catch). One process, so one Go
runtime, per session keeps such a crash to that session.

The parent's WorkerClient is the session's SessionClient: it starts the worker, relays calls to
it and its events to the sink, and supervises it. A worker that dies, whatever the signal or exit
status, is restarted after the reconnect backoff; the session's row says why, and the sends it had
not answered fail as transient (the dispatcher retries them; an answered send already has its
SendResult). stop() ends the worker with SIGTERM, then SIGKILL after STOP_GRACE.

The channel is the worker's stdin and stdout: one JSON object a line (orjson), over asyncio's
subprocess pipes. Standard and small: no pickling between processes, nothing to clean up, and the
worker learns that the poller is gone from the end of its stdin (and PR_SET_PDEATHSIG).
"""

import asyncio
import contextlib
import itertools
import logging
import signal
import sys
import uuid
from datetime import datetime
from typing import Any

import orjson

from poller.backoff import Backoff
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
        self.session_id = session_id
        self.sink = sink
        self.paired_jid = paired_jid
        self.pid: int | None = None  # the running worker's
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
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
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "poller.transports.worker_child",
            str(self.session_id),  # to tell the workers apart in ps
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            start_new_session=True,  # a Ctrl-C in a terminal is the poller's to handle
        )
        assert proc.stdin is not None and proc.stdout is not None
        self._proc, self.pid = proc, proc.pid
        try:
            if self._stopping:  # stop() came while it was starting
                proc.terminate()
            # The database URL stays here: the worker needs no database.
            config = {
                "settings": self.settings.model_dump(mode="json", exclude={"database_url"}),
                "paired_jid": self.paired_jid,
            }
            proc.stdin.write(orjson.dumps(config) + b"\n")
            while line := await proc.stdout.readline():
                self._handle(orjson.loads(line))
            return describe_exit(await proc.wait())
        finally:
            if proc.returncode is None:  # we failed, not the worker: end it
                proc.kill()
            proc.stdin.close()
            self._proc, self.pid = None, None
            self._connected = False
            gone = TransientSendError(f"worker died (pid {proc.pid}) before answering")
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

    async def _call(self, op: str, **args: Any) -> Any:
        proc = self._proc
        if not self._connected or proc is None or proc.stdin is None:
            raise NotConnected("session is not connected")
        call_id = next(self._call_ids)
        call = asyncio.get_running_loop().create_future()
        self._calls[call_id] = call
        proc.stdin.write(orjson.dumps({"op": op, "id": call_id, **args}) + b"\n")
        try:
            return await asyncio.wait_for(call, self.settings.send_timeout + REPLY_MARGIN)
        except TimeoutError as exc:
            raise TransientSendError(f"worker did not answer {op}") from exc
        finally:
            self._calls.pop(call_id, None)

    async def send_text(self, group_jid: str, text: str, message_id: uuid.UUID) -> SendResult:
        result = await self._call("send", group=group_jid, text=text, message_id=str(message_id))
        return SendResult(result["wa_message_id"], datetime.fromisoformat(result["timestamp"]))

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
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)
