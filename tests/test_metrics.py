"""Metrics and health over real HTTP, parsed with prometheus-client's own parser, and the backlog
function under the poller's role on the real database."""

import asyncio
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.db import Database
from poller.metrics import Health, Metrics, MetricsServer
from tests.conftest import poller_url
from tests.poller_support import enqueue, make_team

S1 = uuid.UUID("00000000-0000-4000-8000-00000000aa01")
S2 = uuid.UUID("00000000-0000-4000-8000-00000000aa02")
ME = "metrics-test"


class Served:
    def __init__(self, stale_after: float = 30.0) -> None:
        self.metrics = Metrics()
        self.health = Health(stale_after=stale_after)
        self.server = MetricsServer("127.0.0.1", 0, self.metrics, self.health)

    def get(self, path: str) -> tuple[int, str, str]:
        """Status, content type and body of GET `path`."""
        url = f"http://127.0.0.1:{self.server.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read().decode()

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of a scrape of /metrics: (name, labels) → value."""
        status, content_type, body = self.get("/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=")
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.server.close()


def of(session: uuid.UUID, **labels: str) -> frozenset[tuple[str, str]]:
    return frozenset({"session": str(session), **labels}.items())


def test_counters_and_histograms_read_back_as_the_api_was_called(served):
    m = served.metrics
    now = datetime.now(UTC)
    m.sent(S1, now - timedelta(seconds=2))
    m.sent(S1, now - timedelta(milliseconds=20))
    m.sent(S2, now + timedelta(seconds=1))  # the database's clock ahead of ours: 0, not < 0
    m.failed(S1)
    m.retried(S2)
    m.retried(S2)
    m.receipt("delivered", now, now + timedelta(seconds=3))
    m.receipt("read", now, now + timedelta(hours=2))
    m.reconnected(S1)
    m.worker_restarted(S2)
    m.retry_receipt(S1)
    m.retry_receipt(S1)
    got = served.samples()

    assert got["wa_messages_sent_total", of(S1)] == 2
    assert got["wa_messages_sent_total", of(S2)] == 1
    assert got["wa_messages_failed_total", of(S1)] == 1
    assert ("wa_messages_failed_total", of(S2)) not in got
    assert got["wa_send_retries_total", of(S2)] == 2
    assert got["wa_session_reconnects_total", of(S1)] == 1
    assert got["wa_worker_restarts_total", of(S2)] == 1
    assert got["wa_retry_receipts_total", of(S1)] == 2

    assert got["wa_send_latency_seconds_count", of(S1)] == 2
    assert 2.0 <= got["wa_send_latency_seconds_sum", of(S1)] < 3.0
    assert got["wa_send_latency_seconds_bucket", of(S1, le="0.05")] == 1
    assert got["wa_send_latency_seconds_bucket", of(S1, le="1.0")] == 1
    assert got["wa_send_latency_seconds_bucket", of(S1, le="2.5")] == 2
    assert got["wa_send_latency_seconds_sum", of(S2)] == 0

    delivered = frozenset({"kind": "delivered"}.items())
    assert got["wa_receipt_lag_seconds_sum", delivered] == 3
    read_within = {
        le: got["wa_receipt_lag_seconds_bucket", frozenset({"kind": "read", "le": le}.items())]
        for le in ("3600.0", "14400.0")
    }
    assert read_within == {"3600.0": 0, "14400.0": 1}


def test_a_session_has_one_state_series_which_goes_when_it_is_released(served):
    m = served.metrics
    m.session_state(S1, "connecting")
    m.session_state(S1, "connected")
    m.session_state(S2, "disconnected")

    def states():
        return {
            labels: value
            for (name, labels), value in served.samples().items()
            if name == "wa_session_state"
        }

    assert states() == {of(S1, state="connected"): 1, of(S2, state="disconnected"): 1}
    m.session_state(S1, "connected")
    m.session_released(S2)
    m.session_released(S2)  # twice: nothing left to remove
    assert states() == {of(S1, state="connected"): 1}


def test_healthz_is_200_while_the_loop_beats_and_the_database_answers():
    s = Served(stale_after=0.5)
    try:
        assert s.get("/healthz")[::2] == (503, "main loop not started\n")
        s.health.beat()
        assert s.get("/healthz")[::2] == (503, "database not reached yet\n")
        s.health.database(True)
        status, content_type, body = s.get("/healthz")
        assert (status, content_type, body) == (200, "text/plain; charset=utf-8", "ok\n")

        s.health.database(False, "connection refused")
        assert s.get("/healthz")[::2] == (503, "database: connection refused\n")
        s.health.database(True)
        assert s.get("/healthz")[0] == 200

        time.sleep(0.6)  # neither beats nor answers any more: the loop is named first
        status, _, body = s.get("/healthz")
        assert status == 503 and body.startswith("main loop silent for")
        s.health.beat()
        status, _, body = s.get("/healthz")
        assert status == 503 and body.startswith("database: no answer for")
        s.health.database(True)
        assert s.get("/healthz")[0] == 200
        assert s.get("/nothing")[0] == 404
    finally:
        s.server.close()


def test_close_frees_the_port_at_once():
    s = Served()
    port = s.server.port
    started = time.monotonic()
    s.server.close()
    assert time.monotonic() - started < 2
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    MetricsServer("127.0.0.1", port, Metrics(), Health()).close()  # free to take again


def queue_age(conn: psycopg.Connection, jid: str, seconds: float) -> None:
    """Make the queued jobs of `jid` and their messages `seconds` older."""
    conn.execute(
        "update pgmq.q_whatsapp_outbound set enqueued_at = enqueued_at - make_interval(secs => %s) "
        "where headers ->> 'x-pgmq-group' = %s",
        [seconds, jid],
    )
    conn.execute(
        "update messages set created_at = created_at - make_interval(secs => %s) "
        "where group_jid = %s",
        [seconds, jid],
    )


def backlog(conn: psycopg.Connection, me: str = ME) -> list[tuple]:
    with conn.transaction():
        conn.execute("set local role wa_poller")
        return conn.execute(
            "select session_id, depth, oldest_age_seconds, expired "
            "from private.outbound_backlog(%s)",
            [me],
        ).fetchall()


def test_backlog_reports_the_held_sessions_depth_age_and_expiries(conn):
    team = make_team(conn, groups=4, sessions=3)
    held, empty, other = team.sessions
    jids = {s: [j for j, owner in team.groups.items() if owner == s] for s in team.sessions}
    conn.execute(
        "update whatsapp_sessions set lease_owner = %s, lease_expires_at = now() + interval '1 h' "
        "where id = any(%s)",
        [ME, [held, empty]],
    )
    conn.execute("update whatsapp_sessions set lease_owner = 'another' where id = %s", [other])
    # `held` has two groups (0 and 3), `other` one (1); `empty` one with nothing queued.
    enqueue(conn, jids[held] + jids[other], per_group=3)
    queue_age(conn, jids[held][1], 100)

    rows = {r[0]: r[1:] for r in backlog(conn)}
    assert set(rows) == {held, empty}
    depth, age, expired = rows[held]
    assert (depth, expired) == (6, 0)
    assert 100 <= age < 160
    assert rows[empty] == (0, 0, 0)

    # Expired by the database's TTL: two groups' jobs, counted to their sessions.
    queue_age(conn, jids[held][0], 7200)
    queue_age(conn, jids[other][0], 7200)
    conn.execute("select private.expire_outbound(3600)")
    rows = {r[0]: r[1:] for r in backlog(conn)}
    depth, age, expired = rows[held]
    assert (depth, expired) == (3, 3)
    assert 100 <= age < 160
    assert {r[0]: r[1:] for r in backlog(conn, "another")} == {other: (0, 0, 3)}
    # Folded into the totals once: the log is empty and the counts stay.
    assert conn.execute("select count(*) from private.outbound_expiry_log").fetchone()[0] == 0
    assert {r[0]: r[3] for r in backlog(conn)} == {held: 3, empty: 0}
    assert backlog(conn, "nobody") == []


def test_expiries_logged_while_another_caller_folds_are_counted_all_the_same(conn, db_url):
    team = make_team(conn, groups=1)
    [session] = team.sessions
    [jid] = team.groups
    conn.execute("update whatsapp_sessions set lease_owner = %s", [ME])
    enqueue(conn, [jid], per_group=2)
    queue_age(conn, jid, 7200)
    conn.execute("select private.expire_outbound(3600)")
    with psycopg.connect(db_url) as folder:  # holds the fold's lock until it ends
        folder.execute(
            "select pg_advisory_xact_lock('private.outbound_expiries'::regclass::oid::bigint)"
        )
        assert backlog(conn) == [(session, 0, 0, 2)]
    assert conn.execute("select count(*) from private.outbound_expiry_log").fetchone()[0] == 2
    assert backlog(conn) == [(session, 0, 0, 2)]
    assert conn.execute("select count(*) from private.outbound_expiry_log").fetchone()[0] == 0


def test_only_the_poller_may_read_the_backlog(conn):
    for role in ("anon", "authenticated", "service_role"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(f"set local role {role}")
            conn.execute("select * from private.outbound_backlog('x')")


def test_the_backlog_is_scraped_from_the_snapshot_the_loop_reads(conn, db_url, served):
    team = make_team(conn, groups=2)
    [session] = team.sessions
    conn.execute("update whatsapp_sessions set lease_owner = %s", [ME])
    enqueue(conn, list(team.groups), per_group=2)
    assert not any(name.startswith("wa_queue_") for name, _ in served.samples())

    async def one_read() -> None:
        db = Database(poller_url(db_url))
        await db.open()
        stop = asyncio.Event()
        try:
            watching = asyncio.create_task(
                served.metrics.watch_backlog(db, ME, served.health, stop, interval=0.05)
            )
            while served.health.problem() is not None:  # until the first read answers
                served.health.beat()
                await asyncio.sleep(0.01)
            stop.set()
            await watching
        finally:
            await db.close()

    asyncio.run(one_read())
    got = served.samples()
    assert got["wa_queue_depth", of(session)] == 4
    assert 0 <= got["wa_queue_oldest_age_seconds", of(session)] < 60
    assert got["wa_messages_expired_total", of(session)] == 0
    assert 0 <= got["wa_queue_snapshot_age_seconds", frozenset()] < 10
