"""Stop and start whatever the database does: SIGTERM with the server refusing or gone, one line
per retry naming the server, a LISTEN connection that dies silently, a part of the daemon that
dies (the daemon exits non-zero for systemd to restart it)."""

import asyncio
import logging
import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from poller import daemon
from poller.bootstrap import bootstrap
from poller.cli import main
from poller.db import Database
from poller.dispatcher import Dispatcher
from poller.groups import GroupSync
from poller.localpg import free_port
from poller.receipts import Receipts
from poller.sessions import SessionManager
from tests.conftest import POLLER_PASSWORD, postgres_url, start_server, supabase_database
from tests.poller_support import Poller, enqueue, make_team, wait_until

SHUTDOWN_TIMEOUT = 2.0
# Past WA_SHUTDOWN_TIMEOUT: the interpreter's own start-up and exit, on a loaded machine.
EXIT_MARGIN = 1.5


def stop_in_time(poller: Poller) -> tuple[int, float]:
    """SIGTERM; the exit status and how long it took (fails if it does not end in time)."""
    assert poller.proc is not None
    started = time.monotonic()
    poller.proc.send_signal(signal.SIGTERM)
    try:
        status = poller.proc.wait(timeout=SHUTDOWN_TIMEOUT + EXIT_MARGIN)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after SIGTERM\n{poller.output()[-3000:]}") from None
    return status, time.monotonic() - started


def test_sigterm_at_start_with_the_server_refusing(tmp_path):
    port = free_port()  # nothing listens there
    poller = Poller(f"postgresql://x@127.0.0.1:{port}/wa", tmp_path)
    poller.env["WA_SHUTDOWN_TIMEOUT"] = str(SHUTDOWN_TIMEOUT)
    poller.start()
    try:
        wait_until(lambda: poller.output().count("retry") >= 3, 20, "three retries")
        status, took = stop_in_time(poller)
    finally:
        poller.stop_quietly()
    assert status == 0, poller.output()
    out = poller.output()
    print(f"\nSIGTERM with the server refusing: exit {status} in {took:.2f} s")
    # One line per refused connection, naming the server and role, never the password.
    retries = [line for line in out.splitlines() if "unavailable" in line]
    assert len(retries) >= 3
    for line in retries:
        assert f"unavailable: postgresql://wa_poller:***@127.0.0.1:{port}/wa (" in line, line
        assert " retry " in line and line.endswith(" s"), line
    assert out.count("Connection refused") == len(retries), out
    assert POLLER_PASSWORD not in out
    assert "psycopg.pool" not in out and "cannot be reused" not in out


@pytest.fixture
def own_server():
    """A PostgreSQL of this test's own, since the test stops it."""
    server = start_server()
    url = supabase_database(server, "wa_lifecycle")
    bootstrap(postgres_url(url), poller_password=POLLER_PASSWORD)
    yield server, url
    if server.running():
        server.stop()


def test_sigterm_mid_run_with_the_server_stopped(own_server, tmp_path):
    server, url = own_server
    with psycopg.connect(url, autocommit=True) as conn:
        team = make_team(conn, groups=4)
        enqueue(conn, list(team.groups), per_group=100)
    poller = Poller(url, tmp_path, sim_latency_ms=20, shutdown_timeout=SHUTDOWN_TIMEOUT).start()
    try:
        wait_until(lambda: len(poller.sends()) >= 20, 30, "sends before the stop")
        server.stop()
        wait_until(lambda: "unavailable" in poller.output(), 30, "the poller to notice")
        status, took = stop_in_time(poller)
    finally:
        poller.stop_quietly()
    print(f"\nSIGTERM with the server stopped: exit {status} in {took:.2f} s")
    assert status == 0, poller.output()[-3000:]


def listen_backends(conn: psycopg.Connection) -> set[int]:
    return {
        pid
        for (pid,) in conn.execute(
            "select pid from pg_stat_activity where application_name = 'wa-poller-listen'"
        )
    }


@pytest.mark.parametrize("silently", [False, True], ids=["terminated", "frozen-then-terminated"])
def test_a_dead_listen_connection_is_replaced(conn, db_url, tmp_path, silently):
    team = make_team(conn, groups=1)
    # The fallback poll is a minute: only a notification sends a message at once.
    poller = Poller(db_url, tmp_path, poll_interval=60).start()
    old = None
    try:
        wait_until(lambda: "connected" in poller.output(), 20, "the session to connect")
        wait_until(lambda: listen_backends(conn), 20, "the LISTEN connection")
        (old,) = listen_backends(conn)
        if silently:
            # A backend that stops answering without closing its socket, as behind a network
            # that lost the connection: the kill waits until it resumes.
            os.kill(old, signal.SIGSTOP)
        conn.execute("select pg_terminate_backend(%s)", [old])
        # (a frozen one stays in pg_stat_activity)
        wait_until(lambda: listen_backends(conn) - {old}, 8, "a new LISTEN connection")
        time.sleep(0.3)  # its LISTEN
        enqueue(conn, list(team.groups), per_group=1, tag="after the kill")
        wait_until(lambda: len(poller.sends()) == 1, 2, "the message to be sent at once")
    finally:
        if old is not None and silently:
            os.kill(old, signal.SIGCONT)
        poller.stop_quietly()
    assert "LISTEN connection lost: postgresql://wa_poller:***@" in poller.output()


PARTS = {
    "dispatch": (Dispatcher, "run"),
    "listen": (Database, "listen"),
    "receipts": (Receipts, "run"),
    "sessions": (SessionManager, "run"),
    "group-sync": (GroupSync, "run"),
    "stats": (daemon, "_report"),
}


@pytest.mark.parametrize("part", PARTS)
def test_a_dead_part_stops_the_daemon_with_a_reason_and_exit_1(
    conn, db_url, tmp_path, monkeypatch, caplog, part
):
    make_team(conn, groups=1)
    for key, value in Poller(db_url, tmp_path).env.items():
        if key.startswith("WA_"):
            monkeypatch.setenv(key, value)

    async def dies(*args: object) -> None:
        await asyncio.sleep(0.5)
        raise RuntimeError(f"{part} broke")

    owner, name = PARTS[part]
    monkeypatch.setattr(owner, name, dies)
    caplog.set_level(logging.INFO)
    # Before, a dead part went unnoticed: this SIGTERM ended such a run, with status 0.
    fallback = threading.Timer(15, os.kill, [os.getpid(), signal.SIGTERM])
    fallback.start()
    try:
        status = main(["run"])
    finally:
        fallback.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"task {part} died: RuntimeError('{part} broke'); stopping"
    ]
    assert errors[0].exc_info is not None  # with its traceback
    assert status == 1
    assert "poller stopped" in caplog.text
    session = conn.execute("select status::text, status_reason from whatsapp_sessions").fetchone()
    assert session == ("disconnected", "poller stopped")
