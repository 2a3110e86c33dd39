"""Ticks through Realtime Broadcast: what the triggers put in realtime.messages, and who may join
a group's private topic, tried with the very queries Realtime runs to authorize a client."""

import json
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from poller.resources import query
from tests.personas import (
    G1,
    G2,
    G_INACTIVE,
    G_READONLY,
    G_UNASSIGNED,
    Seed,
    acting_as,
    db_role,
    send_as,
)

ALL_GROUPS = (G1, G2, G_INACTIVE, G_READONLY, G_UNASSIGNED)
CLAIMS_GROUPS = {G1, G_INACTIVE, G_READONLY}
PAYLOAD_KEYS = {
    "id",
    "message_id",
    "group_jid",
    "status",
    "created_at",
    "sent_at",
    "delivered_at",
    "read_at",
    "delivered",
    "read",
    "participants",
}


def topic(jid: str) -> str:
    return f"group:{jid}"


def realtime_context(conn: psycopg.Connection, persona: str, s: Seed, channel: str) -> None:
    """What Realtime sets before it tries a client's policies (Realtime.Tenants.Authorization
    .set_conn_config): role, realtime.topic, the JWT's claims, sub and role, the headers."""
    claims = s.claims(persona) or {"role": db_role(persona)}
    conn.execute(
        "select set_config('role', %s, true), set_config('realtime.topic', %s, true), "
        "set_config('request.jwt.claims', %s, true), "
        "set_config('request.jwt.claim.sub', %s, true), "
        "set_config('request.jwt.claim.role', %s, true), "
        "set_config('request.headers', %s, true)",
        [
            db_role(persona),
            channel,
            json.dumps(claims),
            claims.get("sub"),
            db_role(persona),
            json.dumps({"host": "localhost"}),
        ],
    )


def read_policies(conn: psycopg.Connection, persona: str, s: Seed, channel: str) -> set[str]:
    """Realtime's read check: as its own (privileged) connection it inserts one probe row per
    extension for the topic, then as the client selects them back; all rolled back."""
    probes = {ext: uuid.uuid4() for ext in ("broadcast", "presence")}
    with conn.transaction(force_rollback=True):
        for ext, probe in probes.items():
            conn.execute(
                "insert into realtime.messages (id, topic, extension, inserted_at, updated_at) "
                "values (%s, %s, %s, now()::timestamp, now()::timestamp)",
                [probe, channel, ext],
            )
        realtime_context(conn, persona, s, channel)
        seen = {
            r[0]
            for r in conn.execute(
                "select id from realtime.messages where id = any(%s)", [list(probes.values())]
            )
        }
    return {ext for ext, probe in probes.items() if probe in seen}


def write_policies(conn: psycopg.Connection, persona: str, s: Seed, channel: str) -> set[str]:
    """Realtime's write check: as the client, insert a row per extension in a savepoint; an
    insufficient_privilege error means no. All rolled back."""
    allowed = set()
    with conn.transaction(force_rollback=True):
        realtime_context(conn, persona, s, channel)
        for ext in ("broadcast", "presence"):
            try:
                with conn.transaction():
                    conn.execute(
                        "insert into realtime.messages (topic, extension) values (%s, %s)",
                        [channel, ext],
                    )
                allowed.add(ext)
            except psycopg.errors.InsufficientPrivilege:
                pass
    return allowed


def joinable(conn: psycopg.Connection, persona: str, s: Seed) -> set[str]:
    topics = [topic(g) for g in ALL_GROUPS] + [
        f"group:{G1}:x",
        f"group:{G1[:-1]}",
        "group:",
        "room:lobby",
    ]
    return {t for t in topics if "broadcast" in read_policies(conn, persona, s, t)}


def broadcasts(conn: psycopg.Connection, message_id: uuid.UUID | None = None) -> list[dict]:
    """The broadcasts sent so far (oldest first), or those about one message."""
    cur = conn.execute(
        "select topic, event, private, payload from realtime.messages "
        "where extension = 'broadcast' "
        "and (%(m)s::text is null or payload ->> 'message_id' = %(m)s::text) "
        "order by inserted_at, payload ->> 'message_id'",
        {"m": None if message_id is None else str(message_id)},
    )
    return [
        {"topic": t, "event": e, "private": p, "payload": payload}
        for t, e, p, payload in cur.fetchall()
    ]


def clear(conn: psycopg.Connection) -> None:
    conn.execute("delete from realtime.messages")


def set_participants(conn: psycopg.Connection, jid: str, n: int) -> None:
    people = [{"jid": f"90555000{i:04d}@s.whatsapp.net"} for i in range(n)]
    conn.execute(
        "update whatsapp_groups set participants = %s where jid = %s", [json.dumps(people), jid]
    )


def as_poller(conn: psycopg.Connection, s: Seed, sql: str, params: dict | list) -> None:
    with acting_as(conn, "wa_poller", s, commit=True):
        conn.execute(sql, params)


def apply_receipts(
    conn: psycopg.Connection, s: Seed, kind: str, receipts: list[tuple[str, str]]
) -> None:
    """The poller's own receipts statement, as the poller: (wa_message_id, participant) pairs."""
    now = datetime.now(UTC)
    as_poller(
        conn,
        s,
        query("apply_receipts"),
        {
            "kind": kind,
            "wa_message_ids": [w for w, _ in receipts],
            "ats": [now] * len(receipts),
            "participants": [p for _, p in receipts],
        },
    )


def sent(conn: psycopg.Connection, s: Seed, message_id: uuid.UUID, wa_id: str) -> None:
    as_poller(
        conn,
        s,
        "update public.messages set status = 'sent', wa_message_id = %s, sent_at = now() "
        "where id = %s",
        [wa_id, message_id],
    )


# --- who may join -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        ("anon", set()),
        ("employee", {topic(g) for g in CLAIMS_GROUPS}),
        ("other_employee", {topic(G2)}),
        # user_metadata says admin, app_metadata does not: a member of Claims, nothing more.
        ("impostor", {topic(g) for g in CLAIMS_GROUPS}),
        ("admin", {topic(g) for g in ALL_GROUPS}),
    ],
)
def test_realtimes_read_check_lets_each_persona_join_exactly_their_groups(
    conn, data, persona, expected
):
    assert joinable(conn, persona, data) == expected


def test_service_role_bypasses_the_policies_as_everywhere_on_supabase(conn, data):
    assert read_policies(conn, "service_role", data, topic(G1)) == {"broadcast", "presence"}


def test_membership_is_read_at_join_time(conn, data):
    assert "broadcast" not in read_policies(conn, "other_employee", data, topic(G1))
    conn.execute(
        "insert into employee_group_members (employee_group_id, user_id) values (%s, %s)",
        [data.claims_team, data.other_employee],
    )
    assert "broadcast" in read_policies(conn, "other_employee", data, topic(G1))


def test_presence_is_not_opened_on_group_topics(conn, data):
    assert read_policies(conn, "admin", data, topic(G1)) == {"broadcast"}
    assert read_policies(conn, "employee", data, topic(G1)) == {"broadcast"}


@pytest.mark.parametrize("persona", ["anon", "employee", "other_employee", "admin"])
def test_realtimes_write_check_lets_no_client_send_on_a_group_topic(conn, data, persona):
    for jid in (G1, G2, G_UNASSIGNED):
        assert write_policies(conn, persona, data, topic(jid)) == set()


@pytest.mark.parametrize("persona", ["anon", "employee", "admin"])
def test_a_client_cannot_insert_a_broadcast(conn, data, persona):
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, persona, data):
        conn.execute(
            "insert into realtime.messages (topic, extension, event, payload, private) "
            "values (%s, 'broadcast', 'message_status', '{\"status\": \"read\"}', true)",
            [topic(G1)],
        )
    # realtime.send runs as its caller: from a client it only warns, and sends nothing.
    clear(conn)
    with acting_as(conn, persona, data, commit=True):
        conn.execute(
            "select realtime.send('{\"status\": \"read\"}', 'message_status', %s, true)",
            [topic(G1)],
        )
    assert broadcasts(conn) == []


# --- what is broadcast --------------------------------------------------------------------


def test_each_status_change_is_broadcast_once_with_a_slim_payload(conn, data):
    set_participants(conn, G1, 4)
    clear(conn)
    row = send_as(conn, "employee", data, G1, "Hasar dosyası 4711 kapandı")
    mid = row["id"]
    steps = [
        ("sending", "update public.messages set status = 'sending' where id = %s", [mid]),
        ("sent", None, None),
        (
            "delivered",
            "update public.messages set status = 'delivered', delivered_at = now() where id = %s",
            [mid],
        ),
        (
            "read",
            "update public.messages set status = 'read', read_at = now() where id = %s",
            [mid],
        ),
    ]
    assert broadcasts(conn, mid) == [], "the creation is not broadcast"
    seen: list[dict] = []
    for status, sql, params in steps:
        if sql is None:
            sent(conn, data, mid, "3EB0STATUS")
        else:
            as_poller(conn, data, sql, params)
        # An update that leaves the status alone broadcasts nothing.
        as_poller(conn, data, "update public.messages set attempts = attempts where id = %s", [mid])
        now = broadcasts(conn, mid)
        assert len(now) == len(seen) + 1, status
        seen = now
        tick = now[-1]
        assert tick["topic"] == topic(G1)
        assert tick["event"] == "message_status"
        assert tick["private"] is True
        assert set(tick["payload"]) == PAYLOAD_KEYS
        assert tick["payload"]["status"] == status
        assert tick["payload"]["message_id"] == str(mid)
        assert tick["payload"]["group_jid"] == G1
        assert tick["payload"]["participants"] == 4
        assert (tick["payload"]["delivered"], tick["payload"]["read"]) == (0, 0)
    last = seen[-1]["payload"]
    for stamp in ("created_at", "sent_at", "delivered_at", "read_at"):
        assert datetime.fromisoformat(last[stamp]).utcoffset().total_seconds() == 0
    assert [t["payload"]["status"] for t in seen] == [
        "sending",
        "sent",
        "delivered",
        "read",
    ]
    assert len({t["payload"]["id"] for t in seen}) == len(seen)


def test_a_batch_status_change_is_one_insert_not_a_subtransaction_per_message(conn, data):
    """The poller's claim changes up to a batch of messages in one statement: every one is
    broadcast, in one INSERT (realtime.send's per-call error handling would open a
    subtransaction, and use a transaction id, per message)."""
    conn.execute("update send_limits set sender_per_minute = null, group_pending = null")
    ids = [send_as(conn, "employee", data, G1, f"toplu {n}")["id"] for n in range(150)]
    clear(conn)
    before = conn.execute("select txid_current()").fetchone()[0]
    as_poller(conn, data, "update public.messages set status = 'sending' where id = any(%s)", [ids])
    after = conn.execute("select txid_current()").fetchone()[0]
    ticks = broadcasts(conn)
    assert sorted(t["payload"]["message_id"] for t in ticks) == sorted(map(str, ids))
    assert {t["payload"]["status"] for t in ticks} == {"sending"}
    assert len({t["payload"]["id"] for t in ticks}) == 150
    # This transaction's own id, the update's, and the second txid_current's: no more.
    assert after - before <= 3, after - before


def test_failure_and_give_back_are_broadcast(conn, data):
    clear(conn)
    row = send_as(conn, "employee", data, G1, "olmayacak")
    mid = row["id"]
    as_poller(conn, data, "update public.messages set status = 'sending' where id = %s", [mid])
    as_poller(conn, data, "update public.messages set status = 'pending' where id = %s", [mid])
    as_poller(conn, data, "update public.messages set status = 'sending' where id = %s", [mid])
    as_poller(
        conn,
        data,
        "update public.messages set status = 'failed', error_log = 'gave up' where id = %s",
        [mid],
    )
    assert [t["payload"]["status"] for t in broadcasts(conn, mid)] == [
        "sending",
        "pending",
        "sending",
        "failed",
    ]


def test_a_batch_of_receipts_is_one_broadcast_per_message_with_its_counts(conn, data):
    set_participants(conn, G1, 5)
    a = send_as(conn, "employee", data, G1, "birinci")["id"]
    b = send_as(conn, "employee", data, G1, "ikinci")["id"]
    sent(conn, data, a, "3EB0AAAA")
    sent(conn, data, b, "3EB0BBBB")
    clear(conn)

    people = [f"9055511{i:05d}@s.whatsapp.net" for i in range(4)]
    apply_receipts(
        conn,
        data,
        "delivered",
        [
            ("3EB0AAAA", people[0]),
            ("3EB0AAAA", people[1]),
            ("3EB0AAAA", people[2]),
            ("3EB0BBBB", people[0]),
        ],
    )
    ticks = broadcasts(conn)
    counts = [t for t in ticks if t["event"] == "message_receipts"]
    status = [t for t in ticks if t["event"] == "message_status"]
    assert sorted(
        (t["payload"]["message_id"], t["payload"]["delivered"], t["payload"]["read"])
        for t in counts
    ) == sorted([(str(a), 3, 0), (str(b), 1, 0)])
    assert all(t["payload"]["participants"] == 5 and t["topic"] == topic(G1) for t in counts)
    # The first receipt also moved each status from sent to delivered: one status tick each.
    assert sorted((t["payload"]["message_id"], t["payload"]["status"]) for t in status) == sorted(
        [(str(a), "delivered"), (str(b), "delivered")]
    )

    # One upsert that both updates (people 0, 1 read after delivered) and inserts (person 3
    # reads first): still one broadcast for the message.
    clear(conn)
    apply_receipts(
        conn,
        data,
        "read",
        [("3EB0AAAA", people[0]), ("3EB0AAAA", people[1]), ("3EB0AAAA", people[3])],
    )
    counts = [t for t in broadcasts(conn, a) if t["event"] == "message_receipts"]
    assert [(t["payload"]["delivered"], t["payload"]["read"]) for t in counts] == [(4, 3)]
    assert [
        t["payload"]["status"] for t in broadcasts(conn, a) if t["event"] == "message_status"
    ] == ["read"]

    # The same receipts again change no count: nothing is broadcast.
    clear(conn)
    apply_receipts(conn, data, "read", [("3EB0AAAA", people[0]), ("3EB0AAAA", people[3])])
    assert broadcasts(conn) == []


def test_no_broadcast_holds_the_content(conn, data):
    set_participants(conn, G1, 2)
    secrets = ["Poliçe 99-1234: tazminat 12.500 TL onaylandı", "ikinci gizli içerik ✓✓"]
    ids = [send_as(conn, "employee", data, G1, text)["id"] for text in secrets]
    for n, mid in enumerate(ids):
        as_poller(conn, data, "update public.messages set status = 'sending' where id = %s", [mid])
        sent(conn, data, mid, f"3EB0SECRET{n}")
    apply_receipts(
        conn,
        data,
        "read",
        [
            ("3EB0SECRET0", "905551234567@s.whatsapp.net"),
            ("3EB0SECRET1", "905551234567@s.whatsapp.net"),
        ],
    )
    rows = conn.execute("select payload::text, event from realtime.messages").fetchall()
    assert len(rows) >= 2 * 4
    for payload, _event in rows:
        for text in [*secrets, "ilk mesaj", "second"]:
            assert text not in payload
            assert json.dumps(text)[1:-1] not in payload
        assert '"content"' not in payload


def test_the_broadcast_functions_are_fixed_and_callable_by_nobody(conn):
    funcs = conn.execute(
        "select p.proname::text, p.prosecdef, p.proconfig, "
        "has_function_privilege('authenticated', p.oid, 'execute') "
        "or has_function_privilege('anon', p.oid, 'execute') "
        "or has_function_privilege('wa_poller', p.oid, 'execute') "
        "from pg_proc p where p.pronamespace = 'private'::regnamespace "
        "and p.proname in "
        "('broadcast_ticks', 'broadcast_status_changes', 'broadcast_receipt_counts') "
        "order by 1"
    ).fetchall()
    assert [(name, definer) for name, definer, _, _ in funcs] == [
        ("broadcast_receipt_counts", True),
        ("broadcast_status_changes", True),
        ("broadcast_ticks", False),
    ]
    for name, _, config, callable_ in funcs:
        assert "search_path=pg_catalog, pg_temp" in config, name
        assert not callable_, name
