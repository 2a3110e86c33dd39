"""Session alerts for admins and retry receipts: the real neonize adapter, its handlers fed
neonize's own event objects through neonize's dispatch (tests/neonize_scenarios.py, in a child
process), inside the poller's parts on the test database. A temporary ban holds the session's
messages without using attempts until it ends; retry receipts are counted per participant and
shown to admins; keepalive timeouts, a client too old and logouts land on the session row and in
the admins' session_events. Also: who may read the events, the events across the worker
channel, the bot tag's default and the one line for a session store that cannot be opened."""

import asyncio
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poller.db import Database
from poller.metrics import Metrics
from poller.receipts import Receipts
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.transports.base import ConnectionState
from poller.transports.neonize import describe_store_error
from poller.transports.simulated import SimulatedTransport
from poller.transports.worker import WorkerClient
from poller.transports.worker_child import PipeSink
from tests.conftest import cloned_database, poller_url
from tests.personas import PERSONAS, acting_as
from tests.poller_support import enqueue, make_team
from tests.test_neonize import scenario


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics text, by name and labels (the session label dropped)."""
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "session"))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def events(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select kind, reason, until is not null from session_events order by id"
    ).fetchall()


@pytest.fixture(scope="module")
def alerts_run(pg_server, template_url):
    """A session with two groups and four messages queued, run once through the alerts
    scenario: what it saw, and a connection to its database."""
    with cloned_database(pg_server) as url, psycopg.connect(url, autocommit=True) as conn:
        team = make_team(conn, groups=2)
        enqueue(conn, list(team.groups), per_group=2)
        yield scenario("alerts", poller_url(url), timeout=120), conn


@pytest.fixture
def alerts(alerts_run):
    return alerts_run[0]


@pytest.fixture
def alerts_conn(alerts_run):
    return alerts_run[1]


def test_a_temporary_ban_holds_the_messages_without_attempts_until_it_ends(alerts, alerts_conn):
    conn = alerts_conn
    status, reason = alerts["banned_row"]
    assert status == "banned"
    assert re.fullmatch(
        r"temporarily banned by WhatsApp \(SEND_TO_TOO_MANY_PEOPLE\) until "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
        reason,
    ), reason
    # Not connected while banned: the take reads none of its groups, nothing is attempted.
    assert alerts["banned_connected"] == []
    assert [m[:2] for m in alerts["banned_messages"]] == [["pending", 0]] * 4
    # The ban lasts 2 s: then the session connects again by itself and everything goes.
    assert alerts["sent_after"] >= 1.9
    assert [m[:2] for m in alerts["sent_messages"]] == [["sent", 1]] * 4
    assert alerts["connects"] == 2  # the banned one, the one at the ban's end
    (until,) = conn.execute(
        "select until from session_events where kind = 'temporary_ban'"
    ).fetchone()
    assert timedelta(seconds=1) < until - datetime.now(UTC) + timedelta(minutes=1)


def test_keepalive_timeouts_and_client_outdated_on_the_row_and_in_the_log(alerts, alerts_conn):
    conn = alerts_conn
    status, reason = alerts["keepalive_row"]
    assert status == "connected"  # whatsmeow reconnects by itself when they last
    assert re.fullmatch(
        r"keepalive timeout: no answer from WhatsApp since \d\d:\d\d:\d\d UTC \(1 unanswered\)",
        reason,
    ), reason
    assert alerts["restored_row"] == ["connected", None]
    outdated = "WhatsApp refuses this client as outdated: upgrade neonize, restart the poller"
    assert alerts["outdated_row"][:2] == ["outdated", outdated]
    assert alerts["outdated_row"][2] == f"client_outdated: {outdated}"
    assert alerts["outdated_connected"] is False
    assert alerts["outdated_supervisor_done"] is True  # no reconnect: the version is refused
    assert alerts["final_connects"] == 3  # banned, connected, connected again after a drop
    # Two keepalive timeouts in a row are one event; the poller's stop is not an event.
    assert [(kind, until) for kind, _, until in events(conn)] == [
        ("temporary_ban", True),
        ("keepalive_timeout", False),
        ("keepalive_restored", False),
        ("client_outdated", False),
    ]
    since, last_event_at = conn.execute(
        "select status_since, last_event_at from whatsapp_sessions_overview"
    ).fetchone()
    assert since >= last_event_at  # the poller's stop: disconnected, after the last event


def test_retry_receipts_are_counted_per_participant_and_shown_to_admins(alerts, alerts_conn):
    conn = alerts_conn
    first = alerts["sent_messages"][0][2]
    counts = conn.execute(
        "select participant, retry_count, last_retry_at is not null from message_receipts r "
        "join messages m on m.id = r.message_id where m.wa_message_id = %s "
        "and r.retry_count > 0 order by participant",
        [first],
    ).fetchall()
    assert counts == [
        ("905551234567@s.whatsapp.net", 1, True),
        ("905557654321@s.whatsapp.net", 2, True),  # device part dropped: one participant
    ]
    attention = conn.execute(
        "select m.wa_message_id, a.status::text, a.undecrypted_participants, a.problem "
        "from messages_needing_attention a join messages m on m.id = a.id"
    ).fetchall()
    # Delivered to one participant (its receipt came too), two others could not decrypt it.
    assert attention == [(first, "delivered", 2, "2 participants could not decrypt")]


def test_the_metrics_follow_the_session(alerts):
    seen = samples(alerts["metrics_outdated"])
    assert seen[("wa_session_state", (("state", "outdated"),))] == 1
    assert ("wa_session_state", (("state", "connected"),)) not in seen  # one series a session
    assert seen[("wa_retry_receipts_total", ())] == 3
    assert seen[("wa_session_reconnects_total", ())] == 1  # the first connection is none
    assert seen[("wa_receipt_lag_seconds_count", (("kind", "delivered"),))] == 1
    assert seen[("wa_messages_sent_total", ())] == 4
    # Handed back at the stop: its state series goes, its counters stay.
    after = samples(alerts["metrics"])
    assert not [key for key in after if key[0] == "wa_session_state"]
    assert after[("wa_retry_receipts_total", ())] == 3


def test_worker_restarts_are_counted_from_the_clients_count():
    sid = uuid.uuid4()
    metrics = Metrics()
    manager = SessionManager(None, None, None, Settings(), metrics)  # type: ignore[arg-type]

    class Restarted:
        restarts = 0

    client = manager.clients[sid] = Restarted()  # type: ignore[assignment]
    for restarts in (0, 1, 3):
        client.restarts = restarts
        manager.connection_changed(sid, ConnectionState.DISCONNECTED, "worker died: SIGKILL")
    manager.connection_changed(sid, ConnectionState.CONNECTED, None)
    manager.connection_changed(sid, ConnectionState.CONNECTED, None)
    seen = samples(generate_latest(metrics.registry).decode())
    assert seen[("wa_worker_restarts_total", ())] == 3
    assert seen[("wa_session_reconnects_total", ())] == 1
    assert seen[("wa_session_state", (("state", "connected"),))] == 1


def test_a_logout_is_a_session_event_with_its_reason(conn, db_url, tmp_path):
    (tmp_path / "disconnected").touch()  # the simulated client stays offline
    sid = conn.execute("insert into whatsapp_sessions default values returning id").fetchone()[0]
    before = conn.execute(
        "select status_since from whatsapp_sessions where id = %s", [sid]
    ).fetchone()[0]

    async def run() -> None:
        settings = Settings(
            database_url=poller_url(db_url), poller_id="alerts-test", sim_control_dir=tmp_path
        )
        db = Database(settings.database_url)
        await db.open()
        manager = SessionManager(db, SimulatedTransport(settings), Receipts(db), settings)
        writer = asyncio.create_task(manager._write_in_order())
        await manager.heartbeat()
        manager.connection_changed(sid, ConnectionState.CONNECTED, None)
        manager.logged_out(sid, "logged out: MAIN_DEVICE_GONE")
        manager.connection_changed(sid, ConnectionState.DISCONNECTED, "logged out")
        while not manager._writes.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        writer.cancel()
        await db.close()

    asyncio.run(run())
    assert events(conn) == [("logged_out", "logged out: MAIN_DEVICE_GONE", False)]
    status, since, last_event = conn.execute(
        "select status::text, status_since, last_event from whatsapp_sessions where id = %s",
        [sid],
    ).fetchone()
    assert (status, last_event) == ("disconnected", "logged_out: logged out: MAIN_DEVICE_GONE")
    assert since > before  # connected, then disconnected: each change moves it


def test_an_event_of_a_session_held_by_another_poller_is_not_recorded(conn, data):
    conn.execute("update whatsapp_sessions set lease_owner = 'other' where id = %s", [data.session])
    with acting_as(conn, "wa_poller", data, commit=True):
        recorded = conn.execute(
            "select private.record_session_event('me', %s, 'client_outdated', 'x', null)",
            [data.session],
        ).fetchone()[0]
    assert recorded is False
    assert conn.execute("select status::text from whatsapp_sessions").fetchone()[0] == "connected"


@pytest.mark.parametrize("persona", PERSONAS)
def test_only_admins_read_session_events_and_only_the_function_writes_them(conn, data, persona):
    """The seed has one event. Admins read it; employees see none; anon, service_role and the
    poller have no privilege at all (the poller writes through private.record_session_event)."""
    try:
        with acting_as(conn, persona, data):
            read: object = conn.execute("select count(*) from session_events").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        read = "denied"
    assert read == {"admin": 1, "employee": 0, "other_employee": 0}.get(persona, "denied")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, persona, data):
        conn.execute(
            "insert into session_events (session_id, kind) values (%s, 'logged_out')",
            [data.session],
        )
    executes = conn.execute(
        "select has_function_privilege(%s, 'private.record_session_event"
        "(text, uuid, text, text, timestamptz)', 'execute')",
        ["authenticated" if persona.endswith("employee") or persona == "admin" else persona],
    ).fetchone()[0]
    assert executes is (persona == "wa_poller")


def test_the_attention_view_is_hidden_from_the_api(conn):
    for role in ("anon", "authenticated"):
        assert not conn.execute(
            "select has_table_privilege(%s, 'public.messages_needing_attention', 'select')",
            [role],
        ).fetchone()[0]


def test_session_events_cross_the_worker_channel():
    sid = uuid.uuid4()
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    class Lines:
        def __init__(self) -> None:
            self.lines: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.lines.append(data)

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def session_event(self, *args: object) -> None:
            self.calls.append(args)

    worker_end, sink = Lines(), Recorder()
    pipe = PipeSink(worker_end)  # type: ignore[arg-type]
    pipe.session_event(sid, "temporary_ban", "temporarily banned", until)
    pipe.session_event(sid, "keepalive_restored", None, None)
    client = WorkerClient(Settings(), sid, sink, None)  # type: ignore[arg-type]
    for line in worker_end.lines:
        client._handle(orjson.loads(line))
    assert sink.calls == [
        (sid, "temporary_ban", "temporarily banned", until),
        (sid, "keepalive_restored", None, None),
    ]


@pytest.mark.parametrize(("setting", "expected"), [(None, "off"), ("true", "on"), ("0", "off")])
def test_neonizes_bot_tag_is_off_unless_asked_for_and_set_before_neonize_loads(
    tmp_path, setting, expected
):
    env = {"WA_AUTH_DIR": str(tmp_path), "NEONIZE_BOT_TAG": "on"}  # ours decides, not this
    if setting is not None:
        env["WA_BOT_TAG"] = setting
    code = (
        "import os, sys\n"
        "from poller.settings import Settings\n"
        "from poller.transports.neonize import NeonizeTransport\n"
        "NeonizeTransport(Settings(transport='neonize'))\n"
        "print(os.environ['NEONIZE_BOT_TAG'], 'neonize' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    # neonize not loaded yet: its Go side reads the variable when it is.
    assert done.stdout.split() == [expected, "False"]


def test_a_store_without_tls_says_so_in_one_line_on_the_session_row(conn, db_url):
    make_team(conn, groups=1)
    out = scenario("store-no-tls", poller_url(db_url))
    line = re.fullmatch(
        r"cannot open the session store \(WA_SESSION_STORE_URL, 127\.0\.0\.1:(\d+)\): SSL is "
        r"not enabled on the server: the server offers no TLS: add sslmode=disable to the URL "
        r"\(only for a server on this host or a private network\); retrying in [0-9.]+s",
        out["reason"] or "",
    )
    assert line and int(line.group(1)) == out["port"], out["reason"]


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "failed to upgrade database: failed to check if version table is up to date: dial "
            "tcp 10.0.0.5:5432: connect: connection refused",
            "cannot open the session store (WA_SESSION_STORE_URL, db.example.com:6543): "
            "connection refused",
        ),
        (
            "failed to upgrade database: failed to check if version table is up to date: pq: "
            'password authentication failed for user "wa_session_store"',
            "cannot open the session store (WA_SESSION_STORE_URL, db.example.com:6543): "
            'password authentication failed for user "wa_session_store": wrong user or password',
        ),
        ("failed to dial whatsapp servers: dial tcp: lookup web.whatsapp.com", None),
    ],
)
def test_store_errors_are_one_line_and_others_are_left_alone(message, line):
    url = "postgresql://wa_session_store:secret@db.example.com:6543/postgres"
    assert describe_store_error(message, url) == line
