"""Session workers for real: `wa-poller run` with each session's client in a worker process of its
own, workers killed under it (SIGKILL, SIGABRT) while three sessions send through the simulated
WhatsApp, and twenty neonize sessions that cannot reach WhatsApp reconnecting for a minute; the
channel's events and calls, a worker that does not stop, and the deaths of the fork server and of
the poller."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import orjson
import psycopg
import pytest

from poller.settings import Settings
from poller.transports.base import (
    ConnectionState,
    NotConnected,
    PermanentSendError,
    Receipt,
    ReceiptKind,
)
from poller.transports.simulated import SimulatedTransport
from poller.transports.worker import STOP_GRACE, WorkerClient, WorkerTransport
from poller.transports.worker_child import PipeSink
from tests.poller_support import Poller, enqueue, make_team, status_counts, wait_until


class Recorder:
    """An event sink that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        return lambda *args: self.calls.append((name, *args))


def worker_pid(session: uuid.UUID) -> int | None:
    """The pid of a session's worker: the process named wa-<session id> (cut to 15 chars)."""
    name = f"wa-{session}"[:15]
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                return int(entry.name)
        except OSError:  # gone meanwhile
            continue
    return None


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.update(children)
            todo.extend(children)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def finished(conn: psycopg.Connection) -> int:
    """Messages WhatsApp took (no read receipts in these tests)."""
    counts = status_counts(conn)
    return counts.get("sent", 0) + counts.get("delivered", 0)


def delivered(conn: psycopg.Connection) -> set[str]:
    return {str(m) for (m,) in conn.execute("select id from messages where status = 'delivered'")}


def reason(conn: psycopg.Connection, session: uuid.UUID) -> str:
    return conn.execute(
        "select coalesce(status_reason, '') from whatsapp_sessions where id = %s", [session]
    ).fetchone()[0]


class Lines:
    """Stands in for the worker's end of the socket."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.lines.append(data)


class Account:
    def own_ids(self) -> list[str]:
        return ["905551112233@s.whatsapp.net", "88001234567890@lid"]


def test_every_event_crosses_the_channel_as_it_was():
    sid = uuid.uuid4()
    jid, lid = Account().own_ids()
    receipt = Receipt(
        sid, ("3EB01A", "3EB01B"), ReceiptKind.READ, datetime.now(UTC), "905557654321@lid"
    )
    worker_end = Lines()
    pipe = PipeSink(worker_end)
    pipe.client = Account()
    pipe.qr_code(sid, "2@qr-one,abc")
    pipe.paired(sid, jid, lid)
    pipe.connection_changed(sid, ConnectionState.CONNECTED, None)
    pipe.receipt(receipt)
    pipe.groups_changed(sid)
    pipe.let_go(sid, "stream replaced")
    pipe.logged_out(sid, "logged out: LOGGED_OUT")
    pipe.connection_changed(sid, ConnectionState.DISCONNECTED, "logged out: LOGGED_OUT")

    sink = Recorder()
    client = WorkerClient(Settings(), sid, sink, None)
    for line in worker_end.lines:
        client._handle(orjson.loads(line))
    assert sink.calls == [
        ("qr_code", sid, "2@qr-one,abc"),
        ("paired", sid, jid, lid),
        ("connection_changed", sid, ConnectionState.CONNECTED, None),
        ("receipt", receipt),
        ("groups_changed", sid),
        ("let_go", sid, "stream replaced"),
        ("logged_out", sid, "logged out: LOGGED_OUT"),
        ("connection_changed", sid, ConnectionState.DISCONNECTED, "logged out: LOGGED_OUT"),
    ]
    assert client.own_ids() == [jid, lid]
    assert client.paired_jid == jid  # a restarted worker is told its account
    assert client.connected is False


def test_calls_through_a_simulated_worker(tmp_path):
    groups = [
        {
            "jid": "120363000000000001@g.us",
            "name": "Müşteriler",
            "participants": [{"jid": "905557654321@s.whatsapp.net", "is_admin": True}],
            "announce_only": True,
        }
    ]
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    settings = Settings(
        transport="simulated",
        sim_groups_file=tmp_path / "groups.json",
        sim_log=tmp_path / "sent.jsonl",
        sim_latency_ms=0,
        sim_receipts=False,
    )
    message_id = uuid.uuid4()

    async def scenario() -> dict:
        transport = WorkerTransport(settings)
        client = transport.client(uuid.uuid4(), Recorder())
        seen: dict = {}
        try:
            with pytest.raises(NotConnected):  # before the worker says it is connected
                await client.send_text(groups[0]["jid"], "erken", uuid.uuid4())
            await client.start()
            async with asyncio.timeout(30):
                while not client.connected:
                    await asyncio.sleep(0.01)
            seen["groups"] = await client.joined_groups()
            seen["own_ids"] = client.own_ids()
            seen["sent"] = await client.send_text(groups[0]["jid"], "merhaba", message_id)
            with pytest.raises(PermanentSendError, match="not found"):
                await client.send_text("120363999999999999@g.us", "kimse yok", uuid.uuid4())
        finally:
            await transport.close()
        seen["connected_after_stop"] = client.connected
        return seen

    seen = asyncio.run(scenario())
    assert seen["groups"] == list(SimulatedTransport(settings).groups.values())
    assert seen["own_ids"] == [settings.sim_own_jid]
    [logged] = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
    assert logged["message_id"] == str(message_id)
    assert seen["sent"].wa_message_id == logged["wa_message_id"]
    assert seen["connected_after_stop"] is False


def test_a_worker_that_does_not_stop_is_killed_after_the_grace():
    async def scenario() -> tuple[float, int]:
        transport = WorkerTransport(Settings(transport="simulated"))
        session = uuid.uuid4()
        client = transport.client(session, Recorder())
        await client.start()
        async with asyncio.timeout(30):
            while not client.connected:
                await asyncio.sleep(0.01)
        pid = worker_pid(session)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a stopped process does not act on SIGTERM
        started = time.monotonic()
        await transport.close()
        return time.monotonic() - started, pid

    took, pid = asyncio.run(scenario())
    assert STOP_GRACE <= took < STOP_GRACE + 2
    wait_until(lambda: not alive(pid), 5, "the worker to be gone")


def test_a_killed_fork_server_takes_the_workers_and_comes_back_with_them():
    """The fork server's death kills every worker (PR_SET_PDEATHSIG); the next start of a worker
    starts a new fork server, and every session comes back."""

    async def scenario() -> list[bool]:
        transport = WorkerTransport(
            Settings(transport="simulated", reconnect_initial=0.2, reconnect_max=0.5)
        )
        clients = [transport.client(uuid.uuid4(), Recorder()) for _ in range(2)]
        try:
            for client in clients:
                await client.start()
            async with asyncio.timeout(30):
                while not all(c.connected for c in clients):
                    await asyncio.sleep(0.01)
            # Its workers share its command line: the one whose parent is this process.
            [server] = [
                pid
                for pid in descendants(os.getpid())
                if b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
                and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                == str(os.getpid())
            ]
            os.kill(server, signal.SIGKILL)
            async with asyncio.timeout(10):
                while any(c.connected for c in clients):
                    await asyncio.sleep(0.01)
                while not all(c.connected for c in clients):
                    await asyncio.sleep(0.01)
            return [bool(await c.send_text("1@g.us", "yine", uuid.uuid4())) for c in clients]
        finally:
            await transport.close()

    assert asyncio.run(scenario()) == [True, True]


def test_workers_end_with_a_killed_poller(conn, db_url, tmp_path):
    team = make_team(conn, groups=2, sessions=2)
    poller = Poller(db_url, tmp_path, session_workers=1).start()
    assert poller.proc is not None
    try:
        wait_until(lambda: all(worker_pid(s) for s in team.sessions), 30, "two workers")
        family = descendants(poller.proc.pid)
        poller.kill()
        wait_until(lambda: not any(alive(pid) for pid in family), 10, "its processes to end")
    finally:
        poller.stop_quietly()


def test_killed_worker_loses_nothing_and_the_other_sessions_keep_sending(conn, db_url, tmp_path):
    team = make_team(conn, groups=6, sessions=3)
    enqueue(conn, list(team.groups), per_group=100)
    victim, *others = team.sessions
    poller = Poller(
        db_url,
        tmp_path,
        session_workers=1,
        sim_latency_ms=100,  # two groups a session: 20 sends a second, nearly always one in flight
        reconnect_initial=0.5,
        reconnect_max=1,
    ).start()
    outages: list[tuple[float, float]] = []
    try:
        for sig in (signal.SIGKILL, signal.SIGABRT):
            mark = len(poller.sends())
            wait_until(
                lambda m=mark: (
                    min(
                        Counter(s["session"] for s in poller.sends()[m:])[str(s)]
                        for s in team.sessions
                    )
                    >= 5
                ),
                30,
                f"all three sessions sending\n{poller.output()[-3000:]}",
            )
            pid = worker_pid(victim)
            assert pid is not None
            os.kill(pid, sig)
            killed = time.time()
            wait_until(
                lambda s=sig: f"worker died: {s.name}; restarting in" in reason(conn, victim),
                10,
                f"the session's row to say why ({sig.name})",
                poll=0.02,
            )
            wait_until(
                lambda k=killed: any(
                    s["session"] == str(victim) and s["t"] > k for s in poller.sends()
                ),
                30,
                f"the session to send again after {sig.name}",
            )
            resumed = min(
                s["t"] for s in poller.sends() if s["session"] == str(victim) and s["t"] > killed
            )
            outages.append((killed, resumed))
            assert worker_pid(victim) not in (None, pid)
        wait_until(
            lambda: finished(conn) == 600,
            60,
            f"all 600 sent\n{poller.output()[-3000:]}",
        )
        # Receipts come back from the workers too. One still due in a worker when it was killed
        # is gone with it (the simulated WhatsApp does not send it again): receipts come 50 ms
        # after the send.
        due = {
            s["message_id"]
            for s in poller.sends()
            if any(killed - 0.2 < s["t"] <= killed for killed, _ in outages)
        }
        everything = {str(m) for (m,) in conn.execute("select id from messages")}
        wait_until(
            lambda: delivered(conn) >= everything - due,
            10,
            f"the receipts\n{poller.output()[-3000:]}",
        )
        workers = {pid for s in team.sessions if (pid := worker_pid(s))}
        assert len(workers) == 3
        assert poller.terminate() == 0
    finally:
        poller.stop_quietly()
    wait_until(lambda: not any(alive(pid) for pid in workers), 5, "no worker left behind")
    sends = poller.sends()
    assert len({s["message_id"] for s in sends}) == 600
    for killed, resumed in outages:
        assert resumed - killed >= 0.5  # the backoff: an outage the others had to send through
        for session in others:
            times = [killed, *(s["t"] for s in sends if s["session"] == str(session)), resumed]
            during = sorted(t for t in times if killed <= t <= resumed)
            assert max(b - a for a, b in pairwise(during)) < 0.5, (session, during)
    # What was in flight at a kill failed as transient and went on a later attempt.
    attempts = dict(
        conn.execute("select group_jid, max(attempts) from messages group by 1").fetchall()
    )
    assert max(attempts[jid] for jid, s in team.groups.items() if s == victim) >= 2, attempts
    assert all(attempts[jid] == 1 for jid, s in team.groups.items() if s != victim), attempts
    output = poller.output()
    assert "worker died: SIGKILL; restarting in" in output
    assert "worker died: SIGABRT; restarting in" in output


class NeonizePoller(Poller):
    def start(self) -> "NeonizePoller":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "poller.cli", "run", "--transport", "neonize"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self


def test_twenty_neonize_sessions_without_network_for_a_minute(conn, db_url, tmp_path):
    """neonize keeps its clients in one Go map without a lock; in one process, 20 sessions
    reconnecting this fast died of "concurrent map writes" within about 20 s. A worker holds one
    session's clients, one after the other, and can still die of it (seen once in about 1,250
    failed connects: the last client's goroutines against the next connect): that worker is
    restarted, and nothing else notices."""
    team = make_team(conn, groups=1, sessions=20)
    poller = NeonizePoller(
        db_url,
        tmp_path,
        auth_dir=tmp_path / "auth_info",
        reconnect_initial=0.2,
        reconnect_max=1,
    ).start()
    assert poller.proc is not None
    seen: set[int] = set()
    try:
        wait_until(
            lambda: all(worker_pid(s) for s in team.sessions),
            60,
            f"20 workers\n{poller.output()[-3000:]}",
        )
        started = time.monotonic()
        victim = team.sessions[0]
        killed = False
        while time.monotonic() - started < 60:
            assert poller.proc.poll() is None, poller.output()[-3000:]
            seen |= descendants(poller.proc.pid)
            if not killed and time.monotonic() - started > 30:
                os.kill(worker_pid(victim), signal.SIGKILL)
                killed = True
            time.sleep(1)
        rows = conn.execute("select status::text, status_reason from whatsapp_sessions").fetchall()
        assert all(status in ("connecting", "disconnected") for status, _ in rows), rows
        assert all(worker_pid(s) for s in team.sessions)
        running = poller.output()
        begun = time.monotonic()
        assert poller.terminate(timeout=30) == 0
        stopped_in = time.monotonic() - begun
    finally:
        poller.stop_quietly()
    assert stopped_in < 15
    print(f"\n20 neonize workers for 60 s: poller up, stopped in {stopped_in:.1f} s")
    # The fork server and multiprocessing's resource tracker end once they see the poller gone.
    assert seen
    wait_until(lambda: not [pid for pid in seen if alive(pid)], 5, "no process left behind")
    output = poller.output()
    crashes = running.count("fatal error: concurrent map writes")
    assert running.count(": worker died: SIGABRT; restarting in") == crashes
    print(f"{crashes} worker(s) died of neonize's concurrent map writes and were restarted")
    assert output.count("failed to dial") >= 20 * 10  # every session kept retrying
    assert f"session {victim}: worker died: SIGKILL; restarting in" in output
