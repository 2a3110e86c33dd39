"""The neonize transport driven with real neonize objects: events pushed through neonize's own
dispatch path, and real connect() calls that fail for want of a network. Each scenario runs in a
child process (tests/neonize_scenarios.py), so a Go panic or a hung Go thread fails the test
instead of the whole run."""

import itertools
import json
import re
import subprocess
import sys

import psycopg
import pytest


def scenario(name: str, *args: str, timeout: float = 90) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.neonize_scenarios", name, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_events_through_neonizes_dispatch_reach_the_sink():
    out = scenario("events")
    assert out["send_before_connect"] == "NotConnected: session is not connected"
    assert out["connected"] is True
    assert out["connected_by_stale_client"] is False
    assert out["own_ids"] == ["905551112233@s.whatsapp.net", "88001234567890@lid"]
    assert out["send_without_socket"].startswith("NotConnected")
    assert out["survived_handler_error"] is True
    assert out["connected_after_logout"] is False
    participant = "905557654321@s.whatsapp.net"
    assert out["calls"] == [
        ["qr", "2@qr-one,abc,def"],
        ["qr", "2@qr-two,abc,def"],  # rotated: the newest replaces the last
        ["paired", "905551112233@s.whatsapp.net", "88001234567890@lid"],  # device part dropped
        ["state", "connected", None],
        ["paired", "905551112233@s.whatsapp.net", "88001234567890@lid"],
        ["state", "connected", None],
        ["receipt", "delivered", ["3EB01A", "3EB01B"], participant],
        ["receipt", "read", ["3EB04A", "3EB04B"], participant],
        ["receipt", "read", ["3EB06A", "3EB06B"], participant],  # played counts as read
        # READ_SELF (our own reading) and a receipt with no Type are ignored
        ["groups_changed"],
        ["state", "disconnected", "stream replaced: another client took this WhatsApp account"],
        ["let_go", "stream replaced: another client took this WhatsApp account"],
        ["state", "disconnected", "logged out: TEMP_BANNED"],
        ["logged_out", "logged out: TEMP_BANNED"],
    ]


def test_no_network_backs_off_without_spinning_or_crashing():
    out = scenario("no-network")
    calls = out["calls"]
    attempts = [c[0] for c in calls if c[1] == "state" and c[2] == "connecting"]
    failures = [c for c in calls if c[1] == "state" and c[2] == "disconnected"]
    # 4 s with a 0.2 s start and a 1 s cap: a handful of attempts, not a hot loop.
    assert 3 <= len(attempts) <= 12, attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.2, gaps
    assert max(gaps) <= 1.0 + 0.2 + 0.5, gaps  # cap + jitter + a connect attempt
    delays = [float(re.search(r"retrying in ([0-9.]+)s", c[3]).group(1)) for c in failures]
    assert delays[0] < delays[-1], delays  # the backoff grows
    assert all("failed to dial" in c[3] for c in failures)
    assert out["stop_seconds"] < 6
    assert out["store_exists"]  # the sqlite store is the seed's session-{id} layout


def test_logged_out_clears_the_store_and_stops_reconnecting():
    out = scenario("logout")
    assert out["supervisor_done"] is True
    assert out["store_exists"] is False
    states = [c for c in out["calls"] if c[0] == "state"]
    assert states[-1] == ["state", "disconnected", "logged out: LOGGED_OUT"]
    assert out["calls"][-1] == ["logged_out", "logged out: LOGGED_OUT"]
    assert sum(1 for c in states if c[1] == "connecting") == 1  # no reconnect after it


@pytest.fixture
def store_url(pg_server, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("alter role wa_session_store login password 'store-secret'")
    dbname = db_url.rsplit("/", 1)[1]
    return (
        f"postgres://wa_session_store:store-secret@{pg_server.host}:{pg_server.port}/"
        f"{dbname}?sslmode=disable"
    )


def test_postgres_store_keeps_the_keys_out_of_reach_of_the_api(store_url, conn):
    out = scenario("postgres-store", store_url)
    assert any(c[0] == "state" and c[1] == "disconnected" for c in out["calls"])
    tables = conn.execute(
        "select table_schema, count(*) from information_schema.tables "
        "where table_name like 'whatsmeow%' group by 1"
    ).fetchall()
    assert [t[0] for t in tables] == ["whatsmeow"] and tables[0][1] >= 10
    for role in ("anon", "authenticated", "service_role", "wa_poller"):
        usage = conn.execute(
            "select has_schema_privilege(%s, 'whatsmeow', 'usage')", [role]
        ).fetchone()[0]
        assert usage is False, role
        device = conn.execute(
            "select has_table_privilege(%s, 'whatsmeow.whatsmeow_device', 'select')", [role]
        ).fetchone()[0]
        assert device is False, role
    # And through the API's own role switch: no way to the keys.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select * from whatsmeow.whatsmeow_device")


def test_a_connect_that_never_answers_is_abandoned_and_retried():
    """Through a proxy that accepts and never answers, connect() hangs and so does stop():
    the watchdog gives up on that client, records why, and tries again after the backoff."""
    out = scenario("silent-server")
    states = [c for c in out["calls"] if c[0] == "state"]
    assert states[0] == ["state", "connecting", None]
    assert states[1][1] == "disconnected"
    assert states[1][2].startswith("no answer from WhatsApp within 1.5s; retrying in")
    assert states[2] == ["state", "connecting", None]  # a new client, after the backoff
    assert out["accepted"] >= 2
    assert out["stop_seconds"] < 5


def test_a_live_connection_that_drops_is_retried_after_the_backoff():
    """Connected, then Disconnected (both dispatched through neonize on the supervisor's own
    client): sends are refused at once, the status says so at once, the client is ended, and a
    new one connects after our backoff (reset by the connection), not whatsmeow's own loop."""
    out = scenario("dropped")
    assert out["connected"] is True
    assert out["connected_after_drop"] is False
    assert out["send_after_drop"] == "NotConnected: session is not connected"
    assert out["new_client"] is True
    assert out["connected_by_dropped_client"] is False
    states = [c for c in out["calls"] if c[1] == "state"]
    assert [s[2] for s in states] == [
        "connecting",
        "connected",
        "disconnected",
        "disconnected",
        "connecting",
    ]
    assert states[2][3] == "connection dropped"
    assert states[2][0] - states[1][0] < 0.5  # at once, not after the client's stop()
    retry = re.fullmatch(r"connection dropped; retrying in ([0-9.]+)s", states[3][3])
    assert retry is not None
    # The first retry's wait (attempts were reset by the connection): initial 0.5 s plus jitter.
    assert 0.5 <= float(retry.group(1)) <= 1.0
    assert states[4][0] - states[3][0] >= 0.45  # (times are rounded to the millisecond)
    assert out["accepted"] >= 2  # the new client connected through the proxy again
