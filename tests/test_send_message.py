"""public.send_message: permission checks, input checks (each with its SQLSTATE), the
one-transaction write of row + queue message, idempotency, and exact storage of any text."""

import json
import threading
import uuid

import psycopg
import pytest

from tests.personas import (
    G1,
    G2,
    G_INACTIVE,
    G_READONLY,
    G_UNASSIGNED,
    acting_as,
    send_as,
)

UNKNOWN = "120363999999999999@g.us"


def counts(conn: psycopg.Connection) -> tuple[int, int]:
    return (
        conn.execute("select count(*) from messages").fetchone()[0],
        conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0],
    )


def queued(conn: psycopg.Connection, message_id: object) -> list[tuple]:
    return conn.execute(
        "select message, headers from pgmq.q_whatsapp_outbound where message->>'message_id' = %s",
        [str(message_id)],
    ).fetchall()


def test_success_writes_pending_row_and_one_queue_message(conn, data):
    before = counts(conn)
    row = send_as(conn, "employee", data, G1, "Poliçeniz yenilendi.")
    assert row["status"] == "pending"
    assert row["sender_id"] == data.employee
    assert row["group_jid"] == G1
    assert row["attempts"] == 0
    assert counts(conn) == (before[0] + 1, before[1] + 1)
    assert queued(conn, row["id"]) == [({"message_id": str(row["id"])}, {"x-pgmq-group": G1})]


def test_the_enqueued_row_is_what_pgmq_reads(conn, data):
    """send_message writes the queue row itself (a static INSERT instead of pgmq.send's dynamic
    one): pin the columns of pgmq 1.5.1's table that the project writes and reads (newer pgmq
    adds last_read_at), and check that pgmq's own read returns the message."""
    columns = [
        c[0]
        for c in conn.execute(
            "select column_name from information_schema.columns "
            "where table_schema = 'pgmq' and table_name = 'q_whatsapp_outbound' "
            "order by ordinal_position"
        )
    ]
    assert [c for c in columns if c != "last_read_at"] == [
        "msg_id",
        "read_ct",
        "enqueued_at",
        "vt",
        "message",
        "headers",
    ]
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    row = send_as(conn, "employee", data, G1, "okunur mu?")
    read = conn.execute(
        "select read_ct, message, headers from pgmq.read('whatsapp_outbound', 30, 10)"
    ).fetchall()
    assert read == [(1, {"message_id": str(row["id"])}, {"x-pgmq-group": G1})]


def test_admin_may_send_to_any_active_group(conn, data):
    assert send_as(conn, "admin", data, G_UNASSIGNED, "duyuru")["status"] == "pending"


def test_rollback_of_the_callers_transaction_leaves_nothing(conn, data):
    before = counts(conn)
    with acting_as(conn, "employee", data):  # rolled back
        conn.execute("select send_message(%s, 'x')", [G1])
        conn.execute("reset role")
        assert counts(conn) == (before[0] + 1, before[1] + 1)
    assert counts(conn) == before


def test_a_failing_enqueue_leaves_no_message_row(conn, data):
    before_rows = counts(conn)[0]
    conn.execute("drop table pgmq.q_whatsapp_outbound cascade")
    with pytest.raises(psycopg.errors.UndefinedTable):
        send_as(conn, "employee", data, G1, "never half-written")
    assert counts_rows(conn) == before_rows


def counts_rows(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from messages").fetchone()[0]


REJECTED = [
    # (persona, group_jid, content, SQLSTATE)
    ("employee", G2, "hi", "PT403"),  # assigned to another team
    ("employee", G_UNASSIGNED, "hi", "PT403"),
    ("impostor", G_UNASSIGNED, "hi", "PT403"),  # admin only in user_metadata
    ("employee", UNKNOWN, "hi", "PT403"),  # not told apart from unassigned
    ("admin", UNKNOWN, "hi", "PT404"),
    ("employee", G_INACTIVE, "hi", "PT410"),
    ("employee", G_READONLY, "hi", "PT409"),
    ("employee", None, "hi", "22023"),
    ("employee", "", "hi", "22023"),
    ("employee", "hasar-takip", "hi", "22023"),
    ("employee", "905551112233@s.whatsapp.net", "hi", "22023"),
    ("employee", "120363000000000001@g.us ", "hi", "22023"),
    ("employee", "120363000000000001-@g.us", "hi", "22023"),
    ("employee", "1-2-3@g.us", "hi", "22023"),
    ("employee", "120363000000000001@g.us\n", "hi", "22023"),
    ("employee", G1, None, "22004"),
    ("employee", G1, "", "22004"),
    ("employee", G1, "   ", "22004"),
    ("employee", G1, "\t\r\n", "22004"),
    ("employee", G1, "\u00a0\u200b\u3000\ufeff", "22004"),
    ("employee", G1, "x" * 65537, "22001"),
    ("employee", G1, "ş" * 65537, "22001"),
]


@pytest.mark.parametrize(("persona", "group_jid", "content", "sqlstate"), REJECTED)
def test_rejected_with_sqlstate_and_nothing_written(
    shared_conn, shared_data, persona, group_jid, content, sqlstate
):
    before = counts(shared_conn)
    with pytest.raises(psycopg.Error) as caught:
        send_as(shared_conn, persona, shared_data, group_jid, content)
    assert caught.value.sqlstate == sqlstate
    assert caught.value.diag.message_primary
    assert counts(shared_conn) == before


def test_anon_cannot_call_it(shared_conn, shared_data):
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        send_as(shared_conn, "anon", shared_data, G1, "hi")
    assert "permission denied for function send_message" in str(caught.value)


def test_authenticated_role_without_a_user_is_refused(shared_conn):
    with shared_conn.transaction(force_rollback=True):
        shared_conn.execute("set local role authenticated")
        with pytest.raises(psycopg.Error) as caught:
            shared_conn.execute("select send_message(%s, 'hi')", [G1])
    assert caught.value.sqlstate == "42501"
    assert caught.value.diag.message_primary == "not authenticated"


def test_content_of_exactly_65536_characters_is_accepted(conn, data):
    text = "ğ" * 65536
    row = send_as(conn, "employee", data, G1, text)
    assert len(row["content"]) == 65536
    assert row["content"] == text


@pytest.mark.parametrize(
    "text",
    [
        "Sayın müşterimiz, poliçeniz yenilendi: ĞÜŞİÖÇ ğüşıöç",
        "Kaza 🚗💥 dosyası ✅ 👍🏽 👨‍👩‍👧",
        "مرحبا، تم تجديد وثيقتك",
        "שלום, הפוליסה חודשה",
        "mixed \u202bRTL\u202c and LTR\n\ttabs  and  spaces ",
    ],
)
def test_text_is_stored_byte_for_byte(conn, data, text):
    row = send_as(conn, "employee", data, G1, text)
    stored = conn.execute(
        "select convert_to(content, 'UTF8') from messages where id = %s", [row["id"]]
    ).fetchone()[0]
    assert bytes(stored) == text.encode("utf-8")


def test_same_client_msg_id_returns_the_same_row_and_enqueues_once(conn, data):
    key = uuid.uuid4()
    first = send_as(conn, "employee", data, G1, "bir kez", key)
    before = counts(conn)
    again = send_as(conn, "employee", data, G1, "bir kez", key)
    assert again == first
    assert counts(conn) == before
    assert len(queued(conn, first["id"])) == 1


def test_retry_after_the_group_turned_readonly_still_returns_the_row(conn, data):
    key = uuid.uuid4()
    first = send_as(conn, "employee", data, G1, "önce", key)
    conn.execute(
        "update whatsapp_groups set is_readonly = true, readonly_reason = 'x' where jid = %s", [G1]
    )
    assert send_as(conn, "employee", data, G1, "önce", key)["id"] == first["id"]


def test_same_client_msg_id_from_another_sender_is_another_message(conn, data):
    key = uuid.uuid4()
    mine = send_as(conn, "employee", data, G1, "aynı", key)
    theirs = send_as(conn, "admin", data, G1, "aynı", key)
    assert mine["id"] != theirs["id"]


def test_reusing_a_client_msg_id_for_different_content_is_refused(conn, data):
    key = uuid.uuid4()
    send_as(conn, "employee", data, G1, "first", key)
    before = counts(conn)
    with pytest.raises(psycopg.Error) as caught:
        send_as(conn, "employee", data, G1, "second", key)
    assert caught.value.sqlstate == "PT422"
    assert counts(conn) == before


def test_100_racing_calls_with_one_client_msg_id_make_one_row_and_one_job(db_url, conn, data):
    key = uuid.uuid4()
    callers = 100
    barrier = threading.Barrier(callers)
    ids: list[object] = []
    errors: list[BaseException] = []
    claims = json.dumps(data.claims("employee"))

    def call() -> None:
        try:
            with psycopg.connect(db_url) as c:  # one transaction, committed on exit
                c.execute("set local role authenticated")
                c.execute("select set_config('request.jwt.claims', %s, true)", [claims])
                barrier.wait(timeout=60)
                ids.append(
                    c.execute("select id from send_message(%s, 'yarış', %s)", [G1, key]).fetchone()[
                        0
                    ]
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ids) == callers
    assert len(set(ids)) == 1
    rows = conn.execute("select count(*) from messages where client_msg_id = %s", [key]).fetchone()[
        0
    ]
    assert rows == 1
    assert len(queued(conn, ids[0])) == 1
