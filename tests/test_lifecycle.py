"""Stop and start whatever the database does: SIGTERM with the server refusing or gone, one line
per retry naming the server, a LISTEN connection that dies silently, a part of the daemon that
dies (the daemon exits non-zero for systemd to restart it)."""

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from poller.localpg import free_port
from tests.conftest import POLLER_PASSWORD
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
    "reader": "poller.reader:Reader.run",
    "outcomes": "poller.outcomes:OutcomeWriter.run",
    "leases": "poller.leases:LeaseKeeper.run",
    "listen": "poller.db:Database.listen",
    "receipts": "poller.receipts:Receipts.run",
    "sessions": "poller.sessions:SessionManager.run",
    "group-sync": "poller.groups:GroupSync.run",
    "stats": "poller.daemon:_report",
    "metrics": "poller.metrics:Metrics.watch_backlog",
}
# `wa-poller run` with one part replaced by one that dies after half a second.
FAULTY_RUN = """
import asyncio, importlib, sys
from poller.cli import main
module, path = sys.argv[1].split(":")
*owners, name = path.split(".")
owner = importlib.import_module(module)
for attribute in owners:
    owner = getattr(owner, attribute)
async def dies(*args):
    await asyncio.sleep(0.5)
    raise RuntimeError(sys.argv[2] + " broke")
setattr(owner, name, dies)
sys.exit(main(["run"]))
"""


@pytest.mark.parametrize("part", PARTS)
def test_a_dead_part_stops_the_daemon_with_a_reason_and_exit_1(conn, db_url, tmp_path, part):
    make_team(conn, groups=1)
    # Before, a dead part went unnoticed and the daemon ran on: the timeout fails it.
    result = subprocess.run(
        [sys.executable, "-c", FAULTY_RUN, PARTS[part], part],
        env=Poller(db_url, tmp_path).env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = result.stdout + result.stderr
    errors = [line.split(" ERROR ", 1)[1] for line in out.splitlines() if " ERROR " in line]
    assert errors == [f"poller.tasks: task {part} died: RuntimeError('{part} broke'); stopping"]
    assert "Traceback" in out and "poller stopped" in out
    assert result.returncode == 1, out
    session = conn.execute("select status::text, status_reason from whatsapp_sessions").fetchone()
    assert session == ("disconnected", "poller stopped")
