"""Failures done for real: the poller SIGKILLed mid-run and restarted, PostgreSQL restarted
under it, and the WhatsApp session dropping for 10 seconds."""

import random
import time

import psycopg

from tests.conftest import (
    start_and_wait,
)
from tests.poller_support import (
    Poller,
    enqueue,
    first_send_order,
    make_team,
    queue_order,
    status_counts,
    wait_until,
)

DONE = ("sent", "delivered", "read")


def finished(conn: psycopg.Connection) -> int:
    return sum(v for k, v in status_counts(conn).items() if k in DONE)


def test_sigkill_five_times_loses_nothing_and_keeps_group_order(conn, db_url, tmp_path):
    team = make_team(conn, groups=20)
    enqueue(conn, list(team.groups), per_group=100)
    # A stable poller id, as under systemd: the restarted poller takes its session back at once.
    settings = {"sim_latency_ms": 15, "visibility_timeout": 2, "poller_id": "crash-test"}
    rng = random.Random(7)
    kills: list[float] = []
    for _ in range(5):
        poller = Poller(db_url, tmp_path, **settings).start()
        before = len(poller.sends())
        wait_until(lambda p=poller, b=before: len(p.sends()) > b + 20, 30, "sends to resume")
        time.sleep(rng.uniform(0.05, 0.6))
        poller.kill()
        kills.append(time.time())  # once it is dead: a send logged up to then was before it
    assert finished(conn) < 2000, "the run ended before the kills: make it longer"
    poller = Poller(db_url, tmp_path, **settings).start()
    try:
        wait_until(lambda: finished(conn) == 2000, 120, "all 2000 messages to be sent")
    finally:
        assert poller.terminate() == 0
    counts = status_counts(conn)
    assert set(counts) <= set(DONE) and sum(counts.values()) == 2000, counts

    sends = poller.sends()
    assert len({s["message_id"] for s in sends}) == 2000
    assert first_send_order(sends) == queue_order(conn)
    # A duplicate is a message that WhatsApp accepted before a kill, before its status was
    # written: a kill lies between its first send and the next. (How close to the kill the first
    # send was depends on the machine's load, not on the poller: not asserted.)
    first: dict[str, float] = {}
    again: dict[str, float] = {}
    for entry in sends:
        if entry["message_id"] in first:
            again.setdefault(entry["message_id"], entry["t"])
        else:
            first[entry["message_id"]] = entry["t"]
    duplicates = set(again)
    for message_id in duplicates:
        assert any(first[message_id] <= kill <= again[message_id] for kill in kills), message_id
    print(
        f"\nSIGKILL x5 during 2000 messages: {len(sends) - 2000} duplicate send(s) "
        f"({len(duplicates)} message(s)), 0 lost"
    )


def test_database_restart_under_the_poller(own_server, tmp_path):
    server, url = own_server
    with psycopg.connect(url, autocommit=True) as conn:
        team = make_team(conn, groups=10)
        enqueue(conn, list(team.groups), per_group=50)
    poller = Poller(url, tmp_path, sim_latency_ms=10).start()
    try:
        wait_until(lambda: len(poller.sends()) >= 50, 30, "sends before the restart")
        server.stop()
        time.sleep(2)
        start_and_wait(server)
        with psycopg.connect(url, autocommit=True) as conn:
            enqueue(conn, list(team.groups), per_group=5, tag="after restart")
            wait_until(
                lambda: finished(conn) == 550,
                90,
                f"all messages after the restart\n{poller.output()[-3000:]}",
            )
            order = queue_order(conn)
    finally:
        assert poller.terminate() == 0
    assert "database unavailable" in poller.output() or "connection lost" in poller.output()
    sends = poller.sends()
    assert len({s["message_id"] for s in sends}) == 550
    assert first_send_order(sends) == order


def test_session_down_for_10_seconds_with_500_queued(conn, db_url, tmp_path):
    team = make_team(conn, groups=10)
    poller = Poller(db_url, tmp_path).start()
    try:
        wait_until(lambda: "connected" in poller.output(), 20, "the session to connect")
        poller.disconnect()
        wait_until(
            lambda: (
                conn.execute("select status::text from whatsapp_sessions").fetchone()[0]
                == "disconnected"
            ),
            10,
            "the session to be marked disconnected",
        )
        enqueue(conn, list(team.groups), per_group=50)
        time.sleep(10)
        assert poller.sends() == []
        waiting = conn.execute(
            "select count(*) from messages where status = 'pending' and attempts = 0"
        ).fetchone()[0]
        assert waiting == 500
        poller.reconnect()
        wait_until(lambda: finished(conn) == 500, 60, "all 500 after the reconnect")
    finally:
        assert poller.terminate() == 0
    assert first_send_order(poller.sends()) == queue_order(conn)
    assert conn.execute("select count(*) from messages where attempts <> 1").fetchone()[0] == 0
