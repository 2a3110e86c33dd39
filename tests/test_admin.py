"""Admin commands (sessions add/list, pair) and the daemon on the neonize transport with no
network to reach: it backs off, records why, and stops cleanly."""

import os
import re
import subprocess
import sys
import time

from tests.conftest import poller_url
from tests.poller_support import wait_until


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "poller.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_sessions_add_and_list(conn, db_url):
    done = cli("sessions", "add", "--phone", "905550000042", "--database-url", db_url)
    assert done.returncode == 0, done.stderr
    session_id = done.stdout.strip()
    row = conn.execute(
        "select phone_number, status::text, pair_requested_at is not null "
        "from whatsapp_sessions where id = %s",
        [session_id],
    ).fetchone()
    assert row == ("905550000042", "disconnected", True)
    assert f"wa-poller pair {session_id}" in done.stderr
    listing = cli("sessions", "list", "--database-url", db_url)
    assert listing.returncode == 0 and session_id in listing.stdout


def test_pair_shows_each_qr_code_until_the_phone_scans_it(conn, db_url):
    session_id = conn.execute(
        "insert into whatsapp_sessions (phone_number) values (null) returning id"
    ).fetchone()[0]
    pairing = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "poller.cli",
            "pair",
            str(session_id),
            "--timeout",
            "30",
            "--database-url",
            db_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: conn.execute(
            "select pair_requested_at is not null from whatsapp_sessions where id = %s",
            [session_id],
        ).fetchone()[0],
        10,
        "the pairing request",
    )
    # What the holding poller writes: the rotating QR codes, then the paired account.
    for code in ("2@first-qr,key,key", "2@second-qr,key,key"):
        conn.execute(
            "update whatsapp_sessions set lease_owner = 'p', lease_expires_at = now() + "
            "interval '1 minute', status = 'scanning', qr_code = %s where id = %s",
            [code, session_id],
        )
        time.sleep(1.2)
    conn.execute(
        "update whatsapp_sessions set status = 'connected', qr_code = null, "
        "phone_number = '905551112233', paired_at = now() where id = %s",
        [session_id],
    )
    out, err = pairing.communicate(timeout=20)
    assert pairing.returncode == 0, err
    assert out.count("WhatsApp replaces this code") == 2
    assert "█" in out or "▀" in out  # the QR code, drawn in the terminal
    assert out.strip().endswith("paired: 905551112233")


def test_pair_an_unknown_session_is_a_clear_error(db_url):
    done = cli("pair", "00000000-0000-4000-8000-000000000000", "--database-url", db_url)
    assert done.returncode == 2
    assert "no session" in done.stderr and "Traceback" not in done.stderr


def test_daemon_on_neonize_without_network_backs_off_and_stops_cleanly(conn, db_url, tmp_path):
    session_id = conn.execute(
        "insert into whatsapp_sessions (phone_number) values ('905550000043') returning id"
    ).fetchone()[0]
    env = {
        **os.environ,
        "WA_DATABASE_URL": poller_url(db_url),
        "WA_AUTH_DIR": str(tmp_path),
        "WA_RECONNECT_INITIAL": "0.3",
        "WA_RECONNECT_MAX": "1",
        "WA_HEARTBEAT_INTERVAL": "0.5",
        "WA_LEASE_TTL": "2",
        "WA_POLL_INTERVAL": "0.2",
    }
    daemon = subprocess.Popen(
        [sys.executable, "-m", "poller.cli", "run", "--transport", "neonize"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def reason() -> str:
        row = conn.execute(
            "select status::text, coalesce(status_reason, '') from whatsapp_sessions where id = %s",
            [session_id],
        ).fetchone()
        return f"{row[0]}: {row[1]}"

    try:
        wait_until(
            lambda: re.search(r"failed to dial.*retrying in", reason()) is not None,
            30,
            "a failed connect with its backoff recorded",
        )
        assert (tmp_path / f"session-{session_id}.db").exists()
        time.sleep(2)
        daemon.terminate()
        out, _ = daemon.communicate(timeout=20)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert reason() == "disconnected: poller stopped"
    assert (
        conn.execute(
            "select lease_owner from whatsapp_sessions where id = %s", [session_id]
        ).fetchone()[0]
        is None
    )
