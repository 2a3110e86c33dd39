"""The poller end to end with the simulated WhatsApp: a real `wa-poller run` process connected
as wa_poller, messages queued through send_message."""

import itertools
import time
from datetime import UTC, datetime

import psycopg
import pytest

from tests.poller_support import (
    Poller,
    enqueue,
    first_send_order,
    make_team,
    queue_order,
    status_counts,
    wait_until,
)


@pytest.fixture
def poller_dir(tmp_path):
    return tmp_path


def run_to_completion(conn, poller: Poller, total: int, timeout: float = 60) -> None:
    poller.start()
    try:
        wait_until(
            lambda: (
                sum(
                    v
                    for k, v in status_counts(conn).items()
                    if k in ("sent", "delivered", "read", "failed")
                )
                == total
            ),
            timeout,
            f"{total} messages to be final\n{poller.output()[-3000:]}",
        )
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]


def test_messages_are_sent_in_group_order_with_statuses_and_receipts(conn, db_url, tmp_path):
    team = make_team(conn, groups=5)
    enqueue(conn, list(team.groups), per_group=20)
    poller = Poller(db_url, tmp_path, sim_delivered_after_ms=20, sim_read_after_ms=60).start()
    # Until every receipt is in: a stop drops the receipts the simulated WhatsApp still owes.
    try:
        wait_until(lambda: status_counts(conn) == {"read": 100}, 60, "read receipts")
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]
    sends = poller.sends()
    assert len(sends) == 100
    assert first_send_order(sends) == queue_order(conn)
    rows = conn.execute(
        "select count(*) filter (where wa_message_id is not null and sent_at is not null "
        "and delivered_at is not null and read_at >= delivered_at and delivered_at >= sent_at), "
        "count(*) filter (where attempts = 1) from messages"
    ).fetchone()
    assert rows == (100, 100)
    assert conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0] == 0
    assert conn.execute("select count(*) from pgmq.a_whatsapp_outbound").fetchone()[0] == 100
    session = conn.execute("select status::text, status_reason from whatsapp_sessions").fetchone()
    assert session == ("disconnected", "poller stopped")


def test_transient_failures_are_retried_and_keep_group_order(conn, db_url, tmp_path):
    team = make_team(conn, groups=4)
    enqueue(conn, list(team.groups), per_group=15)
    poller = Poller(db_url, tmp_path, sim_failure_rate=0.3, max_attempts=50)
    run_to_completion(conn, poller, 60)
    counts = status_counts(conn)  # the last receipts may not have come before the stop
    assert set(counts) <= {"sent", "delivered"} and sum(counts.values()) == 60, counts
    retried = conn.execute("select count(*) from messages where attempts > 1").fetchone()[0]
    assert retried > 0
    assert first_send_order(poller.sends()) == queue_order(conn)
    assert len(poller.sends()) == 60  # a failed attempt sends nothing


def test_transient_failures_give_up_after_max_attempts(conn, db_url, tmp_path):
    team = make_team(conn, groups=2)
    enqueue(conn, list(team.groups), per_group=3)
    run_to_completion(conn, Poller(db_url, tmp_path, sim_failure_rate=1.0, max_attempts=3), 6)
    rows = conn.execute("select status::text, attempts, error_log from messages").fetchall()
    assert {(s, a) for s, a, _ in rows} == {("failed", 3)}
    assert all(
        e.startswith("gave up after 3 attempts; last error: simulated timeout") for _, _, e in rows
    )
    assert conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0] == 0


def test_permanent_failures_fail_at_once(conn, db_url, tmp_path):
    team = make_team(conn, groups=2)
    enqueue(conn, list(team.groups), per_group=3)
    poller = Poller(db_url, tmp_path, sim_failure_rate=1.0, sim_failure_kind="permanent")
    run_to_completion(conn, poller, 6)
    rows = conn.execute("select status::text, attempts, error_log from messages").fetchall()
    assert set(rows) == {("failed", 1, "simulated rejection")}
    failed_view = conn.execute("select count(*) from failed_messages").fetchone()[0]
    assert failed_view == 6


def test_inactive_or_readonly_group_at_send_time_fails_without_an_attempt(conn, db_url, tmp_path):
    team = make_team(conn, groups=2)
    jids = list(team.groups)
    enqueue(conn, jids, per_group=2)
    conn.execute("update whatsapp_groups set is_active = false where jid = %s", [jids[0]])
    conn.execute(
        "update whatsapp_groups set is_readonly = true, readonly_reason = 'not a "
        "participant' where jid = %s",
        [jids[1]],
    )
    run_to_completion(conn, Poller(db_url, tmp_path), 4)
    rows = set(conn.execute("select group_jid, status::text, attempts, error_log from messages"))
    assert rows == {
        (jids[0], "failed", 0, "group is inactive: the WhatsApp account left it"),
        (jids[1], "failed", 0, "group is read-only: not a participant"),
    }


def test_messages_of_a_disconnected_session_expire_after_the_ttl(conn, db_url, tmp_path):
    team = make_team(conn, groups=2)
    enqueue(conn, list(team.groups), per_group=2)
    poller = Poller(db_url, tmp_path, message_ttl=1.5)
    poller.disconnect()
    run_to_completion(conn, poller, 4, timeout=30)
    rows = set(conn.execute("select status::text, attempts, error_log from messages"))
    assert rows == {
        ("failed", 0, "expired: not sent within 1.5 s (its WhatsApp session was not connected)")
    }
    assert poller.sends() == []


def test_pacing_spaces_the_sends_of_a_session(conn, db_url, tmp_path):
    team = make_team(conn, groups=3)
    enqueue(conn, list(team.groups), per_group=4)
    poller = Poller(db_url, tmp_path, rate_per_minute=600, rate_jitter=0.2)  # one per 100 ms
    started = time.monotonic()
    run_to_completion(conn, poller, 12)
    times = [entry["t"] for entry in poller.sends()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 12
    assert min(gaps) >= 0.095, gaps
    assert time.monotonic() - started >= 1.1


def test_a_disconnected_session_does_not_delay_another(conn, db_url, tmp_path):
    team = make_team(conn, groups=4, sessions=2)
    enqueue(conn, list(team.groups), per_group=5)
    down = team.sessions[0]
    poller = Poller(db_url, tmp_path)
    poller.disconnect(down)
    poller.start()
    try:
        wait_until(lambda: len(poller.sends()) == 10, 20, "the connected session's messages")
        assert {e["session"] for e in poller.sends()} == {str(team.sessions[1])}
        waiting = conn.execute(
            "select count(*) from messages m join whatsapp_groups g on g.jid = m.group_jid "
            "where g.session_id = %s and m.status = 'pending' and m.attempts = 0",
            [down],
        ).fetchone()[0]
        assert waiting == 10
        poller.reconnect(down)
        wait_until(lambda: len(poller.sends()) == 20, 20, "the reconnected session's messages")
    finally:
        assert poller.terminate() == 0
    assert first_send_order(poller.sends()) == queue_order(conn)


def test_sigterm_hands_back_what_is_left_and_exits_zero(conn, db_url, tmp_path):
    team = make_team(conn, groups=2)
    enqueue(conn, list(team.groups), per_group=30)
    poller = Poller(db_url, tmp_path, rate_per_minute=300, shutdown_timeout=5).start()
    wait_until(lambda: len(poller.sends()) >= 3, 20, "a few sends")
    began = time.monotonic()
    assert poller.terminate(timeout=15) == 0
    assert time.monotonic() - began < 5
    counts = status_counts(conn)
    assert "sending" not in counts, counts
    sent = counts.get("sent", 0) + counts.get("delivered", 0)
    assert sent == len(poller.sends())
    waiting = conn.execute(
        "select count(*) from pgmq.q_whatsapp_outbound where vt <= clock_timestamp() + "
        "interval '1 second'"
    ).fetchone()[0]
    assert waiting == 60 - sent == counts["pending"]
    assert "poller stopped" in poller.output()


def test_status_never_moves_backwards(conn, data):
    conn.execute("update messages set status = 'read' where id = %s", [data.m1])
    for status in ("delivered", "sent", "pending", "failed"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("update messages set status = %s where id = %s", [status, data.m1])


def test_messages_committed_while_the_poller_reads_are_never_lost(conn, db_url, tmp_path):
    """Producers commit one message per transaction while the poller runs flat out: every
    queue message must find its row (none archived as missing), and all are sent in order."""
    import json
    import threading

    from tests.poller_support import EMPLOYEE

    team = make_team(conn, groups=8)
    jids = list(team.groups)
    claims = json.dumps({"sub": str(EMPLOYEE), "role": "authenticated"})
    poller = Poller(db_url, tmp_path, sim_latency_ms=0).start()

    def produce(offset: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            for i in range(100):
                with c.transaction():
                    c.execute("set local role authenticated")
                    c.execute("select set_config('request.jwt.claims', %s, true)", [claims])
                    c.execute("select send_message(%s, %s)", [jids[(offset + i) % 8], f"p{i}"])

    try:
        producers = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for p in producers:
            p.start()
        for p in producers:
            p.join()
        wait_until(lambda: len(poller.sends()) == 400, 60, "all 400 sends")
    finally:
        assert poller.terminate() == 0
    assert "does not exist" not in poller.output()
    assert first_send_order(poller.sends()) == queue_order(conn)


def test_receipts_only_move_statuses_forward(conn, data):
    from datetime import UTC, datetime, timedelta

    from poller.resources import query

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    conn.execute(
        "update messages set status = 'sent', wa_message_id = 'W1', sent_at = %s where id = %s",
        [t0, data.m1],
    )
    conn.execute(
        "update messages set status = 'sent', wa_message_id = 'W2', sent_at = %s where id = %s",
        [t0, data.m2],
    )

    def apply(kind: str, wa_ids: list[str], at: datetime) -> set[str]:
        params = {
            "wa_message_ids": wa_ids,
            "ats": [at] * len(wa_ids),
            "participants": [None] * len(wa_ids),
            "kind": kind,
        }
        return {r[0] for r in conn.execute(query("apply_receipts"), params)}

    t1, t2, t3 = (t0 + timedelta(seconds=n) for n in (1, 2, 3))
    assert apply("read", ["W1"], t1) == {"W1"}
    assert apply("delivered", ["W1", "W2", "UNKNOWN"], t2) == {"W1", "W2"}
    assert apply("read", ["W2"], t3) == {"W2"}
    rows = conn.execute(
        "select wa_message_id, status::text, delivered_at, read_at from messages "
        "where wa_message_id is not null order by 1"
    ).fetchall()
    assert rows == [("W1", "read", t1, t1), ("W2", "read", t2, t3)]


def test_group_receipts_are_kept_per_participant(conn, data):
    from datetime import UTC, datetime, timedelta

    from poller.resources import query
    from tests.personas import acting_as

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    conn.execute(
        "update messages set status = 'sent', wa_message_id = 'W1', sent_at = %s where id = %s",
        [t0, data.m1],
    )
    a, b = "905553333333@s.whatsapp.net", "905554444444@s.whatsapp.net"
    for kind, who, seconds in (
        ("delivered", a, 1),
        ("delivered", b, 2),
        ("read", a, 3),
        ("delivered", a, 4),
    ):
        conn.execute(
            query("apply_receipts"),
            {
                "wa_message_ids": ["W1"],
                "ats": [t0 + timedelta(seconds=seconds)],
                "participants": [who],
                "kind": kind,
            },
        )
    rows = conn.execute(
        "select participant, delivered_at - %s, read_at - %s from message_receipts "
        "where participant in (%s, %s) order by 1",
        [t0, t0, a, b],
    ).fetchall()
    second = timedelta(seconds=1)
    assert rows == [(a, 1 * second, 3 * second), (b, 2 * second, None)]
    with acting_as(conn, "employee", data):  # the group's team sees them (and the seeded one)
        assert conn.execute("select count(*) from message_receipts").fetchone()[0] == 3
    with acting_as(conn, "other_employee", data):  # another team does not
        assert conn.execute("select count(*) from message_receipts").fetchone()[0] == 0


def test_a_message_behind_an_earlier_one_of_its_group_is_not_claimed(conn, data):
    """Two reads can race and offer a later message while an earlier one of the group is
    still queued: the claim hands it back, visible at once, unless the earlier one is the
    caller's own (held in its memory)."""
    from tests.personas import G1, send_as

    conn.execute("delete from pgmq.q_whatsapp_outbound")
    first = send_as(conn, "employee", data, G1, "birinci")
    second = send_as(conn, "employee", data, G1, "ikinci")
    ids = dict(conn.execute("select message->>'message_id', msg_id from pgmq.q_whatsapp_outbound"))
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'me', "
        "lease_expires_at = now() + interval '1 minute'"
    )
    conn.execute("update pgmq.q_whatsapp_outbound set vt = now() + interval '30 seconds'")

    def claim(message: dict, held: list[int]) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "select content from private.claim_outbound("
                "  %s::bigint[], %s::uuid[], %s::uuid[], 'me', %s::bigint[], 3600)",
                [[ids[str(message["id"])]], [message["id"]], [data.session], held],
            )
        ]

    assert claim(second, held=[]) == []
    visible, status = conn.execute(
        "select q.vt <= clock_timestamp(), m.status::text from pgmq.q_whatsapp_outbound q "
        "join messages m on m.id = (q.message ->> 'message_id')::uuid where m.id = %s",
        [second["id"]],
    ).fetchone()
    assert (visible, status) == (True, "pending")
    assert claim(second, held=[ids[str(first["id"])]]) == ["ikinci"]  # ours: it goes after


def take(conn, me: str, sessions: list, qty: int = 10) -> list[tuple]:
    return conn.execute(
        "select group_jid, content from private.take_outbound("
        "  %s, %s::uuid[], %s::integer[], '{}', 30, %s, 3600)",
        [me, sessions, [100] * len(sessions), qty],
    ).fetchall()


def test_the_read_keeps_group_order_and_reads_only_sessions_this_poller_holds(conn, data):
    from tests.personas import G1, G2, send_as

    conn.execute("delete from pgmq.q_whatsapp_outbound")
    for n in range(3):
        send_as(conn, "employee", data, G1, f"g1-{n}")
        send_as(conn, "other_employee", data, G2, f"g2-{n}")
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'other', "
        "lease_expires_at = now() + interval '1 minute'"
    )
    assert take(conn, "me", [data.session]) == []  # all of it is the other poller's
    conn.execute("update whatsapp_sessions set lease_expires_at = now() - interval '1 second'")
    assert take(conn, "me", [data.session]) == []  # lapsed, but not ours until we take it
    assert conn.execute("select sum(read_ct) from pgmq.q_whatsapp_outbound").fetchone()[0] == 0
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'me', "
        "lease_expires_at = now() + interval '1 minute'"
    )
    assert take(conn, "me", []) == []  # held, but not connected: not read
    got = take(conn, "me", [data.session], qty=4)
    # Round robin: the head of each group, then the next of each; in queue order overall.
    assert sorted(got, key=lambda r: r[1][-1]) == [
        (G1, "g1-0"),
        (G2, "g2-0"),
        (G1, "g1-1"),
        (G2, "g2-1"),
    ]
    assert take(conn, "me", [data.session]) == []  # the heads are in flight: nothing overtakes
    statuses = conn.execute(
        "select content, status::text from messages where content like 'g_-_' order by content"
    ).fetchall()
    assert dict(statuses) == {
        "g1-0": "sending",
        "g1-1": "sending",
        "g1-2": "pending",
        "g2-0": "sending",
        "g2-1": "sending",
        "g2-2": "pending",
    }


def test_an_armed_listener_is_notified_once_and_not_while_an_insert_is_open(db_url, data):
    """The wake-up: the first insert after an arm notifies, later ones do not; and the arm is
    refused while a transaction that inserted into the queue has not committed."""
    from tests.conftest import poller_url
    from tests.personas import G1, send_as

    with (
        psycopg.connect(poller_url(db_url), autocommit=True) as poller,
        psycopg.connect(db_url, autocommit=True) as producer,
    ):
        poller.execute("listen wa_outbound")

        def notified() -> int:
            return len(list(poller.notifies(timeout=0.3)))

        send_as(producer, "employee", data, G1, "before the arm")
        assert notified() == 0
        assert poller.execute("select private.arm_outbound_listener()").fetchone()[0] is True
        send_as(producer, "employee", data, G1, "wakes the poller")
        send_as(producer, "employee", data, G1, "no second notification")
        assert notified() == 1
        with producer.transaction():
            send_as(producer, "employee", data, G1, "not committed yet")
            assert poller.execute("select private.arm_outbound_listener()").fetchone()[0] is False
        assert poller.execute("select private.arm_outbound_listener()").fetchone()[0] is True


def test_sigterm_during_a_slow_status_write_loses_no_status(conn, db_url, tmp_path):
    """A status write still under way at SIGTERM is finished, not cancelled."""
    import threading

    team = make_team(conn, groups=4)
    enqueue(conn, list(team.groups), per_group=20)
    poller = Poller(db_url, tmp_path, sim_latency_ms=30, shutdown_timeout=8).start()
    wait_until(lambda: len(poller.sends()) >= 8, 20, "a few sends")
    locked = threading.Event()
    release = threading.Event()

    def hold_rows() -> None:  # a slow database: the next status write (it archives) waits
        with psycopg.connect(db_url) as other:
            other.execute("lock table pgmq.a_whatsapp_outbound in exclusive mode")
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_rows)
    holder.start()
    locked.wait(10)
    time.sleep(0.3)  # sends finish and their write blocks on the locked rows
    poller.proc.send_signal(15)
    time.sleep(1.0)
    release.set()
    holder.join()
    assert poller.proc.wait(timeout=20) == 0
    counts = status_counts(conn)
    assert "sending" not in counts, counts
    assert counts.get("sent", 0) + counts.get("delivered", 0) == len(poller.sends()), counts


def test_an_insert_never_waits_behind_another_while_the_listener_is_armed(db_url, data):
    """A long transaction that inserted while the flag was armed holds the flag row; a second
    sender neither waits for it nor depends on it: it commits at once and notifies itself."""
    from tests.conftest import poller_url
    from tests.personas import G1, send_as

    with (
        psycopg.connect(poller_url(db_url), autocommit=True) as poller,
        psycopg.connect(db_url, autocommit=True) as long_one,
        psycopg.connect(db_url, autocommit=True) as quick,
    ):
        poller.execute("listen wa_outbound")
        assert poller.execute("select private.arm_outbound_listener()").fetchone()[0] is True
        with long_one.transaction(force_rollback=True):  # and it rolls back in the end
            send_as(long_one, "employee", data, G1, "in a long transaction")
            quick.execute("set statement_timeout = '2s'")
            send_as(quick, "employee", data, G1, "does not wait")
            assert len(list(poller.notifies(timeout=0.5))) == 1


def test_the_read_takes_no_lock_on_groups_it_does_not_take(conn, data):
    from tests.personas import G1, G2, send_as

    send_as(conn, "employee", data, G1, "g1")
    send_as(conn, "other_employee", data, G2, "g2")
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'me', "
        "lease_expires_at = now() + interval '1 minute'"
    )
    with conn.transaction(force_rollback=True):
        taken = conn.execute(
            "select count(*) from private.take_outbound("
            "  'me', %s::uuid[], '{9}', '{}', 30, 1, 3600)",
            [[data.session]],
        ).fetchone()[0]
        advisory = conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
        ).fetchone()[0]
    assert (taken, advisory) == (1, 0)


def test_an_idle_poller_is_woken_by_the_next_message_not_by_polling(conn, db_url, tmp_path):
    """With the fallback poll at 60 s, each message sent one at a time to an idle poller goes out
    at once; also when an insert transaction is open while the poller tries to arm."""
    jids = list(make_team(conn, groups=2).groups)
    poller = Poller(db_url, tmp_path, poll_interval=60, sim_delivered_after_ms=0).start()
    try:
        wait_until(lambda: "connected" in poller.output(), 20, "the session to connect")
        with psycopg.connect(db_url) as slow:  # an insert left open, committed later
            enqueue(slow, [jids[0]], per_group=1, tag="slow")
            time.sleep(0.3)
            slow.commit()
        for n in range(10):
            time.sleep(0.1)  # idle in between
            enqueue(conn, [jids[1]], per_group=1, tag=f"one-{n}")
            wait_until(lambda n=n: len(poller.sends()) == n + 2, 5, f"message {n} to be sent")
        latencies = [
            r[0]
            for r in conn.execute(
                "select extract(epoch from sent_at - created_at)::float8 from messages"
            )
        ]
    finally:
        assert poller.terminate() == 0
    assert len(latencies) == 11
    assert max(latencies) < 1.0, latencies


def test_a_read_planned_on_an_empty_queue_stays_fast_on_a_backlog(conn, data):
    """take_outbound's plans are cached: the ones made while the queue was empty (and analyzed
    so) must not turn into scans of a backlog of 20,000 before the next ANALYZE."""
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute("alter table pgmq.q_whatsapp_outbound set (autovacuum_enabled = false)")
    conn.execute("analyze pgmq.q_whatsapp_outbound")
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'me', "
        "lease_expires_at = now() + interval '1 hour'"
    )
    conn.execute(
        "insert into whatsapp_groups (jid, name, session_id) "
        "select '1203631111' || lpad(i::text, 8, '0') || '@g.us', 'G' || i, %s "
        "from generate_series(1, 50) i",
        [data.session],
    )
    take = (
        "select count(*) from private.take_outbound("
        "  'me', %s::uuid[], '{1000}', '{}', 30, 200, 3600)"
    )
    for _ in range(10):  # past the point where the cached, generic plans are used
        conn.execute(take, [[data.session]])
    conn.execute(
        "with m as ("
        "  insert into messages (group_jid, content) "
        "  select '1203631111' || lpad((i % 50 + 1)::text, 8, '0') || '@g.us', 'm' || i "
        "  from generate_series(1, 20000) i returning id, group_jid) "
        "insert into pgmq.q_whatsapp_outbound (vt, message, headers) "
        "select clock_timestamp(), jsonb_build_object('message_id', m.id), "
        "jsonb_build_object('x-pgmq-group', m.group_jid) from m"
    )
    started = time.perf_counter()
    assert conn.execute(take, [[data.session]]).fetchone()[0] == 200
    # The stale plans still scan the queue once per group until the next ANALYZE (about 90 ms
    # here on a quiet machine): bounded, where a window sort of the whole queue was not.
    assert time.perf_counter() - started < 1.0


def test_the_read_keeps_to_the_room_each_session_has(conn, data):
    """No more of a session's messages are read than the caller has room for, the oldest
    first, and a session with no room is not read at all."""
    from tests.personas import G1, send_as

    conn.execute("delete from pgmq.q_whatsapp_outbound")
    for n in range(4):
        send_as(conn, "employee", data, G1, f"cap-{n}")
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'me', "
        "lease_expires_at = now() + interval '1 minute'"
    )

    def take(room: int) -> list[tuple]:
        return conn.execute(
            "select content from private.take_outbound("
            "  'me', %s::uuid[], %s::integer[], '{}', 30, 10, 3600)",
            [[data.session], [room]],
        ).fetchall()

    assert take(0) == []
    assert take(2) == [("cap-0",), ("cap-1",)]
    read = conn.execute(
        "select (message->>'message_id')::uuid, read_ct from pgmq.q_whatsapp_outbound"
    ).fetchall()
    statuses = dict(
        conn.execute(
            "select content, status::text from messages where content like 'cap-%'"
        ).fetchall()
    )
    assert sorted(ct for _, ct in read) == [0, 0, 1, 1]
    assert statuses == {
        "cap-0": "sending",
        "cap-1": "sending",
        "cap-2": "pending",
        "cap-3": "pending",
    }


def test_a_rate_limited_session_over_its_cap_never_flickers(conn, db_url, tmp_path):
    """A paced session with more queued than WA_SESSION_INFLIGHT: at most that many are
    `sending` at once, none goes back from `sending` to `pending`, all go out in group order."""
    conn.execute("create table status_log (id uuid, old text, new text)")
    conn.execute(
        "create function log_status() returns trigger language plpgsql security definer "
        "as $$ begin insert into public.status_log values (new.id, old.status, new.status); "
        "return new; end $$"
    )
    conn.execute(
        "create trigger log_status after update of status on messages "
        "for each row execute function log_status()"
    )
    jids = list(make_team(conn, groups=4).groups)
    enqueue(conn, jids, per_group=10)
    poller = Poller(db_url, tmp_path, session_inflight=3, rate_per_minute=1200)
    most_sending = 0
    poller.start()
    try:
        deadline = time.monotonic() + 60
        while finished_count(conn) < 40 and time.monotonic() < deadline:
            sending = status_counts(conn).get("sending", 0)
            most_sending = max(most_sending, sending)
            time.sleep(0.02)
        assert finished_count(conn) == 40, poller.output()[-3000:]
        order = queue_order(conn)
    finally:
        assert poller.terminate() == 0
    flicker = conn.execute(
        "select count(*) from status_log where old = 'sending' and new = 'pending'"
    ).fetchone()[0]
    assert (flicker, 0 < most_sending <= 3) == (0, True)
    assert first_send_order(poller.sends()) == order


def finished_count(conn) -> int:
    return sum(v for k, v in status_counts(conn).items() if k in ("sent", "delivered", "read"))


def test_the_poller_refuses_to_start_without_its_queue_functions(conn, db_url, tmp_path):
    """The start-up check tests the signatures the poller calls and its right to execute them,
    and names what is missing, instead of failing at the first retry."""
    conn.execute(
        "revoke execute on function private.outbound_retry(uuid[], bigint[], text[], "
        "double precision[]) from wa_poller"
    )
    conn.execute("drop function private.outbound_extend(bigint[], double precision)")
    poller = Poller(db_url, tmp_path).start()
    assert poller.proc is not None
    assert poller.proc.wait(timeout=30) != 0
    output = poller.output()
    assert "private.outbound_retry(uuid[], bigint[], text[], double precision[])" in output, output
    assert "private.outbound_extend(bigint[], double precision)" in output, output
    assert "private.outbound_sent" not in output, output


def test_a_session_taken_over_during_a_pacing_wait_hands_its_lane_back_at_once(
    conn, db_url, tmp_path
):
    """The lane waits for the session's pacing; meanwhile another poller takes the session. The
    lane must hand its messages back at once for the new holder, not fail on the client that
    is gone and leave them to the visibility timeout."""
    team = make_team(conn, groups=1)
    [jid] = team.groups
    enqueue(conn, [jid], per_group=5)
    # One send every 10 s: the lane is waiting in the pacer right after its first send.
    poller = Poller(db_url, tmp_path, rate_per_minute=6, visibility_timeout=60).start()
    try:
        wait_until(lambda: len(poller.sends()) == 1, 20, "the first send")
        conn.execute(
            "update whatsapp_sessions set lease_owner = 'another-poller', "
            "lease_expires_at = now() + interval '1 hour'"
        )
        wait_until(lambda: "lease lost to another poller" in poller.output(), 10, "the drop")

        def handed_back() -> bool:
            return (
                conn.execute(
                    "select count(*) from pgmq.q_whatsapp_outbound q "
                    "join messages m on m.id = (q.message ->> 'message_id')::uuid "
                    "where q.vt <= clock_timestamp() and m.status = 'pending'"
                ).fetchone()[0]
                == 4
            )

        # At once: the pacing wait ends with the session (about 8 s of it were left).
        wait_until(handed_back, 3, "the lane's four messages to be handed back, visible")
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]
    assert len(poller.sends()) == 1
    assert "lane for" not in poller.output(), poller.output()[-3000:]


def test_expiry_runs_on_the_database_clock_whoever_holds_the_session(conn, data):
    """Messages of a group without a session are never read, yet expire; jobs with nothing
    left to do ahead of them (their message gone) are archived on the way and cannot keep
    the expiry from seeing the rest."""
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute(
        "insert into whatsapp_groups (jid, name, session_id) values "
        "('120363555555555555@g.us', 'Oturumsuz', null)"
    )
    conn.execute(
        "insert into pgmq.q_whatsapp_outbound (vt, message, headers) "
        "select clock_timestamp(), jsonb_build_object('message_id', gen_random_uuid()), "
        '\'{"x-pgmq-group": "120363555555555555@g.us"}\' from generate_series(1, 250)'
    )
    conn.execute(
        "with m as (insert into messages (group_jid, content, created_at) "
        "  select '120363555555555555@g.us', 'eski ' || i, now() - interval '2 days' "
        "  from generate_series(1, 5) i returning id, group_jid) "
        "insert into pgmq.q_whatsapp_outbound (vt, enqueued_at, message, headers) "
        "select clock_timestamp(), now() - interval '2 days', "
        "jsonb_build_object('message_id', m.id), jsonb_build_object('x-pgmq-group', m.group_jid) "
        "from m"
    )
    take = "select count(*) from private.take_outbound('me', '{}', '{}', '{}', 30, 10, 3600)"
    assert conn.execute(take).fetchone()[0] == 0
    assert conn.execute(take).fetchone()[0] == 0
    rows = set(
        conn.execute(
            "select status::text, attempts, error_log from messages where content like 'eski %'"
        )
    )
    assert rows == {
        ("failed", 0, "expired: not sent within 3600 s (its WhatsApp session was not connected)")
    }
    assert conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0] == 0
    assert conn.execute("select count(*) from pgmq.a_whatsapp_outbound").fetchone()[0] == 255


def test_one_settle_statement_writes_every_kind_of_outcome(conn, data):
    """The outcome writer's one call: sent, retry, failed and given back together, each job by
    its own transition, with its own delay."""
    from poller.resources import query
    from tests.personas import G1, acting_as, send_as

    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'me', "
        "lease_expires_at = now() + interval '1 minute'"
    )
    rows = [send_as(conn, "employee", data, G1, text) for text in ("bir", "iki", "üç", "dört")]
    ids = [r["id"] for r in rows]
    taken = conn.execute(
        "select msg_id, message_id from private.take_outbound("
        "  'me', %s::uuid[], '{100}', '{}', 30, 10, 3600)",
        [[data.session]],
    ).fetchall()
    assert [message_id for _, message_id in taken] == ids
    msg = [msg_id for msg_id, _ in taken]
    with acting_as(conn, "wa_poller", data, commit=True):
        counts = conn.execute(
            query("settle"),
            {
                "sent_ids": [ids[0]],
                "sent_msg_ids": [msg[0]],
                "wa_message_ids": ["3EB0SETTLE"],
                "sent_ats": [datetime.now(UTC)],
                "retry_ids": [ids[1]],
                "retry_msg_ids": [msg[1]],
                "retry_errors": ["timeout"],
                "retry_delays": [60.0],
                "failed_ids": [ids[2]],
                "failed_msg_ids": [msg[2]],
                "failed_errors": ["not a participant"],
                "back_ids": [ids[3]],
                "back_msg_ids": [msg[3]],
                "back_delays": [0.0],
            },
        ).fetchone()
    created = conn.execute("select created_at from messages where id = %s", [ids[0]]).fetchone()
    sent_created_ats, *written = counts
    assert written == [1, 1, 1, 1]
    assert {k: datetime.fromisoformat(v) for k, v in sent_created_ats.items()} == {
        str(ids[0]): created[0]
    }
    messages = conn.execute(
        "select status::text, attempts, error_log, wa_message_id from messages "
        "where id = any(%s) order by array_position(%s, id)",
        [ids, ids],
    ).fetchall()
    assert messages == [
        ("sent", 1, None, "3EB0SETTLE"),
        ("pending", 1, "timeout", None),
        ("failed", 1, "not a participant", None),
        ("pending", 0, None, None),
    ]
    queued = conn.execute(
        "select msg_id, round(extract(epoch from vt - clock_timestamp())) from "
        "pgmq.q_whatsapp_outbound order by msg_id"
    ).fetchall()
    assert [m for m, _ in queued] == [msg[1], msg[3]]  # sent and failed are archived
    assert 55 <= queued[0][1] <= 60 and queued[1][1] <= 0
