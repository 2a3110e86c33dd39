"""The security review of the SQL half: each of its eight findings reproduced, then held.

1. pg_temp types in SECURITY DEFINER code   5. documented errors instead of 23503
2. quotas in send_message (PT429)           6. a message keeps its sender
3. no group existence oracle (PT403)        7. the poller changes the queue only through
4. echoed input is cut short                   the project's functions
                                            8. invisible content is empty (22004)

The catalog side of 1 and 7 (every function's search_path, the poller's privileges) is in
tests/test_structure.py."""

import json
import re
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import poller_url
from tests.personas import G1, G2, G_UNASSIGNED, Seed, acting_as, send_as

UNKNOWN = "120363999999999999@g.us"


def counts(conn: psycopg.Connection) -> tuple[int, int]:
    return (
        conn.execute("select count(*) from messages").fetchone()[0],
        conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0],
    )


def refusal(call: Callable[[], object]) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        call()
    return caught.value


def no_messages(conn: psycopg.Connection) -> None:
    """Start from an empty message log and queue (the seed has a pending message in G1 and G2)."""
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute("delete from messages")


# --- 1. Types resolved through pg_temp by code running as its owner -------------------------

# A caller who may `set role authenticated` (the `authenticator` login, any SQL session of the
# API) plants a domain named like a built-in type in its own pg_temp. Its CHECK runs whatever
# the caller wrote, as whoever evaluates the cast: if that is a SECURITY DEFINER function whose
# search_path leaves pg_temp first, it runs as the function's owner.
TRAP_FUNCTION = """
create function pg_temp.trap(v pg_catalog.text) returns pg_catalog.bool
language plpgsql as $trap$
begin
  perform pg_catalog.set_config('leak.roles', pg_catalog.concat_ws(',',
    nullif(pg_catalog.current_setting('leak.roles', true), ''), current_user), false);
  begin
    perform pg_catalog.set_config('leak.x',
      (select pg_catalog.string_agg(u.email, ',') from auth.users u), false);
  exception when insufficient_privilege then
    null;  -- the caller itself cannot read auth.users: only the owner's rights can
  end;
  return true;
end
$trap$
"""


LITERALS = {"uuid": "00000000-0000-4000-8000-000000000000", "jsonb": "{}"}


@pytest.mark.parametrize("type_name", LITERALS)
@pytest.mark.parametrize(
    "probe",
    [
        pytest.param(
            lambda c: c.execute("select * from public.whatsapp_groups").fetchall(), id="rls"
        ),
        pytest.param(
            lambda c: c.execute("select * from public.send_message(%s, 'merhaba')", [G1]),
            id="send_message",
        ),
    ],
)
def test_a_pg_temp_type_never_runs_as_a_function_owner(conn, data, type_name, probe):
    """Finding 1: a plain select (its RLS policy calls the SECURITY DEFINER helpers, which read
    auth.uid()) and a send_message call must not resolve `uuid`/`jsonb` to the caller's pg_temp
    domain; else its CHECK reads every e-mail of auth.users as the owner."""
    with acting_as(conn, "employee", data):
        conn.execute(TRAP_FUNCTION)
        conn.execute(
            f"create domain pg_temp.{type_name} as pg_catalog.{type_name} "
            "check (pg_temp.trap(value::pg_catalog.text))"
        )
        probe(conn)
        leaked, roles = conn.execute(
            "select current_setting('leak.x', true), current_setting('leak.roles', true)"
        ).fetchone()
        # The trap is armed: the caller's own unqualified cast does reach it (as the caller).
        conn.execute(f"select %s::{type_name}", [LITERALS[type_name]])
        armed = conn.execute("select current_setting('leak.roles', true)").fetchone()[0]
    assert "authenticated" in (armed or "").split(",")
    assert not leaked, f"the pg_temp domain ran as the owner and read auth.users: {leaked}"
    assert set(filter(None, (roles or "").split(","))) <= {"authenticated"}, roles


# --- 2. Quotas ------------------------------------------------------------------------------

RETRY_IN = re.compile(r"retry in (\d+) ?s", re.IGNORECASE)


def set_limits(conn: psycopg.Connection, s: Seed, **limits: int | None) -> int:
    """An admin changes the send limits (committed); returns the rows changed."""
    assignments = ", ".join(f"{name} = %({name})s" for name in limits)
    with acting_as(conn, "admin", s, commit=True):
        return conn.execute(f"update public.send_limits set {assignments}", limits).rowcount


def test_send_limits_is_one_row_with_defaults_admins_read(conn, data):
    assert conn.execute(
        "select sender_per_minute, group_pending from public.send_limits"
    ).fetchall() == [(60, 1000)]
    with acting_as(conn, "admin", data):
        assert conn.execute(
            "select sender_per_minute, group_pending from public.send_limits"
        ).fetchall() == [(60, 1000)]


def test_the_61st_message_in_a_minute_is_refused_and_others_are_not(conn, data):
    no_messages(conn)
    for i in range(60):
        send_as(conn, "employee", data, G1, f"mesaj {i}")
    before = counts(conn)
    error = refusal(lambda: send_as(conn, "employee", data, G1, "bir fazla"))
    assert error.sqlstate == "PT429"
    assert "60" in error.diag.message_primary
    assert "minute" in error.diag.message_primary.lower()
    retry = RETRY_IN.search(error.diag.message_hint or "")
    assert retry, error.diag.message_hint
    assert 1 <= int(retry.group(1)) <= 60
    assert counts(conn) == before
    # Another sender is unaffected, in the same group and in another.
    assert send_as(conn, "admin", data, G1, "yönetici")["status"] == "pending"
    assert send_as(conn, "other_employee", data, G2, "satış")["status"] == "pending"


def test_an_admin_raising_or_lifting_the_per_minute_limit_lets_sends_pass(conn, data):
    no_messages(conn)
    assert set_limits(conn, data, sender_per_minute=3) == 1
    for i in range(3):
        send_as(conn, "employee", data, G1, f"mesaj {i}")
    assert refusal(lambda: send_as(conn, "employee", data, G1, "4")).sqlstate == "PT429"
    assert set_limits(conn, data, sender_per_minute=4) == 1
    send_as(conn, "employee", data, G1, "4")
    assert refusal(lambda: send_as(conn, "employee", data, G1, "5")).sqlstate == "PT429"
    assert set_limits(conn, data, sender_per_minute=None) == 1
    for i in range(5, 10):
        send_as(conn, "employee", data, G1, str(i))


def test_the_group_pending_limit_counts_what_waits_in_the_group(conn, data):
    no_messages(conn)
    assert set_limits(conn, data, group_pending=3) == 1
    made = [send_as(conn, "employee", data, G1, f"bekleyen {i}") for i in range(3)]
    before = counts(conn)
    error = refusal(lambda: send_as(conn, "employee", data, G1, "dördüncü"))
    assert error.sqlstate == "PT429"
    assert "3" in error.diag.message_primary
    assert re.search(r"pending|waiting", error.diag.message_primary, re.IGNORECASE)
    assert "retry" in (error.diag.message_hint or "").lower()
    assert counts(conn) == before
    # Whoever sends: the limit is the group's.
    assert refusal(lambda: send_as(conn, "admin", data, G1, "yönetici")).sqlstate == "PT429"
    # Another group is unaffected.
    assert send_as(conn, "admin", data, G2, "başka grup")["status"] == "pending"
    # A message that has gone frees a place.
    conn.execute("update messages set status = 'sent' where id = %s", [made[0]["id"]])
    conn.execute(
        "delete from pgmq.q_whatsapp_outbound where message->>'message_id' = %s",
        [str(made[0]["id"])],
    )
    send_as(conn, "employee", data, G1, "dördüncü")
    assert refusal(lambda: send_as(conn, "employee", data, G1, "beşinci")).sqlstate == "PT429"
    assert set_limits(conn, data, group_pending=None) == 1
    send_as(conn, "employee", data, G1, "beşinci")


def test_an_idempotent_retry_is_never_refused_by_the_quotas(conn, data):
    no_messages(conn)
    assert set_limits(conn, data, sender_per_minute=2, group_pending=2) == 1
    keys = [uuid.uuid4(), uuid.uuid4()]
    made = [send_as(conn, "employee", data, G1, f"anahtarlı {i}", k) for i, k in enumerate(keys)]
    assert refusal(lambda: send_as(conn, "employee", data, G1, "yeni", uuid.uuid4())).sqlstate == (
        "PT429"
    )
    before = counts(conn)
    for i, k in enumerate(keys):
        assert send_as(conn, "employee", data, G1, f"anahtarlı {i}", k)["id"] == made[i]["id"]
    assert counts(conn) == before


@pytest.mark.parametrize("persona", ["employee", "other_employee", "impostor", "anon", "wa_poller"])
def test_only_admins_change_the_send_limits(conn, data, persona):
    attempts = [
        "update public.send_limits set sender_per_minute = null, group_pending = null",
        "delete from public.send_limits",
        "insert into public.send_limits (sender_per_minute) values (null)",
    ]
    for statement in attempts:
        try:
            with acting_as(conn, persona, data, commit=True):
                conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            pass
        except psycopg.errors.UniqueViolation:
            pytest.fail(f"{persona} could insert into send_limits")
    assert conn.execute(
        "select sender_per_minute, group_pending from public.send_limits"
    ).fetchall() == [(60, 1000)]


# --- 3. No group existence oracle -----------------------------------------------------------


def shape(error: psycopg.Error, jid: str) -> tuple:
    diag = error.diag
    return (
        error.sqlstate,
        (diag.message_primary or "").replace(jid, "<jid>"),
        diag.message_detail,
        diag.message_hint,
    )


@pytest.mark.parametrize("persona", ["employee", "other_employee", "impostor"])
def test_non_admins_cannot_tell_an_unknown_group_from_an_unassigned_one(
    shared_conn, shared_data, persona
):
    seen = {
        jid: shape(refusal(lambda j=jid: send_as(shared_conn, persona, shared_data, j, "hi")), jid)
        for jid in (UNKNOWN, G_UNASSIGNED)
    }
    assert seen[UNKNOWN][0] == "PT403"
    assert seen[UNKNOWN] == seen[G_UNASSIGNED]


def test_admins_still_learn_that_a_group_is_unknown(shared_conn, shared_data):
    error = refusal(lambda: send_as(shared_conn, "admin", shared_data, UNKNOWN, "hi"))
    assert error.sqlstate == "PT404"


# --- 4. Echoed input ------------------------------------------------------------------------


def short_diagnostics(error: psycopg.Error) -> None:
    diag = error.diag
    assert len(diag.message_primary or "") < 200, len(diag.message_primary or "")
    assert len(diag.message_detail or "") < 200
    assert len(diag.message_hint or "") < 200


def test_a_huge_malformed_group_jid_is_not_echoed(shared_conn, shared_data):
    huge = "x" * 1_000_000
    error = refusal(lambda: send_as(shared_conn, "employee", shared_data, huge, "hi"))
    assert error.sqlstate in ("22023", "22001")  # malformed, or longer than the column
    short_diagnostics(error)


def test_echoed_input_is_cut_to_80_characters(shared_conn, shared_data):
    jid = "hasar-takip-" + "0123456789" * 20
    error = refusal(lambda: send_as(shared_conn, "employee", shared_data, jid, "hi"))
    assert error.sqlstate in ("22023", "22001")
    said = " ".join(
        filter(
            None, [error.diag.message_primary, error.diag.message_detail, error.diag.message_hint]
        )
    )
    assert not any(jid[i : i + 81] in said for i in range(len(jid) - 80)), said


@pytest.mark.parametrize("length", [65, 1_000_000])
def test_a_well_formed_group_jid_longer_than_the_column_is_refused_first(
    shared_conn, shared_data, length
):
    jid = "1" * (length - len("@g.us")) + "@g.us"
    for persona in ("employee", "admin"):
        error = refusal(lambda p=persona: send_as(shared_conn, p, shared_data, jid, "hi"))
        assert error.sqlstate == "22001", (persona, error.sqlstate)
        assert jid not in error.diag.message_primary
        short_diagnostics(error)


def test_a_64_character_group_jid_is_not_too_long(shared_conn, shared_data):
    jid = "1" * 59 + "@g.us"
    error = refusal(lambda: send_as(shared_conn, "employee", shared_data, jid, "hi"))
    assert error.sqlstate == "PT403"


# --- 5. Documented errors instead of 23503 --------------------------------------------------


def test_a_jwt_whose_user_was_deleted_is_not_authenticated(conn, data):
    conn.execute("delete from auth.users where id = %s", [data.admin])
    before = counts(conn)
    error = refusal(lambda: send_as(conn, "admin", data, G1, "hayalet"))
    assert error.sqlstate == "42501", error
    assert error.diag.message_primary.startswith("not authenticated: ")
    assert counts(conn) == before


def connect_as(db_url: str, persona: str, s: Seed) -> psycopg.Connection:
    """A connection with an open transaction acting as `persona` (as PostgREST would)."""
    c = psycopg.connect(db_url)
    c.execute("set local role authenticated")
    c.execute("select set_config('request.jwt.claims', %s, true)", [json.dumps(s.claims(persona))])
    return c


def wait_for_lock(conn: psycopg.Connection, pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while conn.execute(
        "select wait_event_type is distinct from 'Lock' from pg_stat_activity where pid = %s",
        [pid],
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "the statement never waited for a lock"
        time.sleep(0.02)


def in_thread(statement: Callable[[], object]) -> Callable[[], BaseException | None]:
    """Run `statement` in a thread; the returned function joins it and gives its exception."""
    outcome: list[BaseException | None] = [None]

    def run() -> None:
        try:
            statement()
        except BaseException as exc:
            outcome[0] = exc

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> BaseException | None:
        thread.join(timeout=30)
        assert not thread.is_alive()
        return outcome[0]

    return join


def without_messages_in_g1(conn: psycopg.Connection, s: Seed) -> None:
    """A group that can be deleted: the seed's message in G1 goes (its receipts cascade)."""
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute("delete from messages where id = %s", [s.m1])


def test_a_group_delete_waits_for_a_send_in_progress_then_fails_on_its_message(db_url, conn, data):
    without_messages_in_g1(conn, data)
    sender = connect_as(db_url, "employee", data)
    deleter = psycopg.connect(db_url)
    try:
        sender.execute("select * from public.send_message(%s, 'gönderiliyor')", [G1])
        deleter_pid = deleter.info.backend_pid
        join = in_thread(
            lambda: deleter.execute("delete from public.whatsapp_groups where jid = %s", [G1])
        )
        wait_for_lock(conn, deleter_pid)
        sender.commit()
        assert isinstance(join(), psycopg.errors.ForeignKeyViolation)
    finally:
        sender.close()
        deleter.close()
    assert (
        conn.execute("select count(*) from messages where group_jid = %s", [G1]).fetchone()[0] == 1
    )


@pytest.mark.parametrize(("persona", "sqlstate"), [("employee", "PT403"), ("admin", "PT404")])
def test_a_send_racing_a_group_delete_gets_a_documented_error(
    db_url, conn, data, persona, sqlstate
):
    """The delete is not committed yet when the send reads the group: the send must wait for it
    (KEY SHARE on the group row) and then answer as for a missing group, never 23503."""
    without_messages_in_g1(conn, data)
    deleter = psycopg.connect(db_url)
    sender = connect_as(db_url, persona, data)
    try:
        deleter.execute("delete from public.whatsapp_groups where jid = %s", [G1])
        sender_pid = sender.info.backend_pid
        join = in_thread(
            lambda: sender.execute("select * from public.send_message(%s, 'yarış')", [G1])
        )
        wait_for_lock(conn, sender_pid)
        deleter.commit()
        error = join()
    finally:
        sender.close()
        deleter.close()
    assert isinstance(error, psycopg.Error), error
    assert error.sqlstate == sqlstate, error
    assert counts(conn) == (1, 0)  # the seed's message in G2, nothing queued


@pytest.mark.parametrize(("persona", "sqlstate"), [("employee", "PT403"), ("admin", "PT404")])
def test_a_group_deleted_before_the_send(conn, data, persona, sqlstate):
    without_messages_in_g1(conn, data)
    conn.execute("delete from whatsapp_groups where jid = %s", [G1])
    error = refusal(lambda: send_as(conn, persona, data, G1, "silinmiş"))
    assert error.sqlstate == sqlstate


# --- 6. The sender outlives the account -----------------------------------------------------


def test_a_message_keeps_who_sent_it_when_the_user_is_deleted(conn, data):
    row = send_as(conn, "employee", data, G1, "kim gönderdi?")
    assert row["sender_email"] == "employee@agency.test"
    conn.execute("delete from auth.users where id = %s", [data.employee])
    assert conn.execute(
        "select sender_id, sender_email from messages where id = %s", [row["id"]]
    ).fetchone() == (data.employee, "employee@agency.test")
    # The seeded message, written before the account went, keeps its sender too.
    assert conn.execute("select sender_id from messages where id = %s", [data.m1]).fetchone() == (
        data.employee,
    )


def test_messages_sender_id_references_no_account(conn):
    assert (
        conn.execute(
            "select conname from pg_constraint where conrelid = 'public.messages'::regclass "
            "and contype = 'f' and confrelid = 'auth.users'::regclass"
        ).fetchall()
        == []
    )


# --- 7. The poller and the queue ------------------------------------------------------------

LOCK_MODES = [
    "access share",
    "row share",
    "row exclusive",
    "share update exclusive",
    "share",
    "share row exclusive",
    "exclusive",
    "access exclusive",
]


@pytest.mark.parametrize("mode", LOCK_MODES)
def test_wa_poller_cannot_lock_the_queue_table(conn, data, mode):
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, "wa_poller", data):
        conn.execute(f"lock table pgmq.q_whatsapp_outbound in {mode} mode nowait")


QUEUE_BYPASSES = {
    "forge an archived job": "insert into pgmq.a_whatsapp_outbound (msg_id, vt, message) "
    "values (999999, now(), '{}')",
    "drop a job without archiving it": "delete from pgmq.q_whatsapp_outbound",
    "hide a job for 100 years": "update pgmq.q_whatsapp_outbound "
    "set vt = now() + interval '100 years'",
    "truncate the queue": "truncate pgmq.q_whatsapp_outbound",
    "read the queue table": "select * from pgmq.q_whatsapp_outbound",
    "read the archive": "select * from pgmq.a_whatsapp_outbound",
    "enqueue": "insert into pgmq.q_whatsapp_outbound (vt, message) values (now(), '{}')",
    "pgmq.read": "select * from pgmq.read('whatsapp_outbound', 30, 10)",
    "pgmq.archive": "select pgmq.archive('whatsapp_outbound', 1::bigint)",
    "pgmq.delete": "select pgmq.delete('whatsapp_outbound', 1::bigint)",
    "pgmq.set_vt": "select * from pgmq.set_vt('whatsapp_outbound', 1::bigint, 2147483647)",
    "pgmq.send": "select pgmq.send('whatsapp_outbound', '{}'::jsonb)",
    "pgmq.metrics": "select * from pgmq.metrics('whatsapp_outbound')",
    "pgmq.purge_queue": "select pgmq.purge_queue('whatsapp_outbound')",
}


@pytest.mark.parametrize("statement", QUEUE_BYPASSES.values(), ids=QUEUE_BYPASSES.keys())
def test_wa_poller_cannot_touch_the_queue_but_through_the_projects_functions(conn, data, statement):
    send_as(conn, "employee", data, G1, "kuyrukta")
    before = conn.execute(
        "select msg_id, vt, message from pgmq.q_whatsapp_outbound order by msg_id"
    ).fetchall()
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "wa_poller", data, commit=True),
    ):
        conn.execute(statement)
    assert (
        conn.execute(
            "select msg_id, vt, message from pgmq.q_whatsapp_outbound order by msg_id"
        ).fetchall()
        == before
    )


def queued(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select q.msg_id, (q.message ->> 'message_id')::uuid, q.vt from pgmq.q_whatsapp_outbound q "
        "order by q.msg_id"
    ).fetchall()


# Through its own functions the poller can still only do what a poller does: a job whose
# message still waits is never archived, whatever ids it passes, and no delay exceeds an hour.
MISUSED_TRANSITIONS = {
    "sent with another message's id": "select private.outbound_sent("
    "array[gen_random_uuid()], %(msg_ids)s, array['3EB0X'], array[now()])",
    "failed with no message": "select private.outbound_fail('{}', %(msg_ids)s, '{}')",
}


@pytest.mark.parametrize("statement", MISUSED_TRANSITIONS.values(), ids=MISUSED_TRANSITIONS.keys())
def test_the_poller_cannot_archive_the_job_of_a_waiting_message(conn, data, statement):
    send_as(conn, "employee", data, G1, "bekliyor")
    before = queued(conn)
    with acting_as(conn, "wa_poller", data, commit=True):
        conn.execute(statement, {"msg_ids": [row[0] for row in before]})
    assert queued(conn) == before
    assert conn.execute("select count(*) from pgmq.a_whatsapp_outbound").fetchone()[0] == 0


LONG_DELAYS = {
    "extend": "select private.outbound_extend(%(msg_ids)s, 3.2e9)",
    "give back": "select private.outbound_give_back('{}', %(msg_ids)s, '{3.2e9}')",
    "retry": "select private.outbound_retry(array[%(id)s], %(msg_ids)s, '{x}', '{3.2e9}')",
}


@pytest.mark.parametrize("statement", LONG_DELAYS.values(), ids=LONG_DELAYS.keys())
def test_no_transition_hides_a_job_for_more_than_an_hour(conn, data, statement):
    row = send_as(conn, "employee", data, G1, "gizlenemez")
    [(msg_id, _, _)] = queued(conn)
    with acting_as(conn, "wa_poller", data, commit=True):
        conn.execute(statement, {"msg_ids": [msg_id], "msg_id": msg_id, "id": row["id"]})
    hidden_for = conn.execute(
        "select extract(epoch from vt - clock_timestamp()) from pgmq.q_whatsapp_outbound"
    ).fetchone()[0]
    assert 3500 < hidden_for <= 3600


def test_a_poller_connection_idle_in_a_transaction_is_ended(conn, data, db_url):
    """arm_outbound_listener's SHARE lock lasts until its transaction ends: a poller
    connection left idle inside one is ended after 10 s instead of stalling send_message."""
    with psycopg.connect(poller_url(db_url)) as poller:
        shown = poller.execute("show idle_in_transaction_session_timeout").fetchone()[0]
    assert shown == "10s"


# --- 8. Invisible content -------------------------------------------------------------------

BLANK = {
    "NEL": "\u0085",
    "zero width space": "\u200b",
    "ZWNJ": "\u200c",
    "ZWJ": "\u200d",
    "word joiner": "\u2060",
    "soft hyphen": "\u00ad",
    "hangul filler": "\u3164",
    "hangul choseong filler": "\u115f",
    "hangul jungseong filler": "\u1160",
    "halfwidth hangul filler": "\uffa0",
    "braille blank": "\u2800",
    "VS16": "\ufe0f",
    "VS1": "\ufe00",
    "SOH": "\u0001",
    "DEL": "\u007f",
    "APC": "\u009f",
    "BOM": "\ufeff",
    "RLO": "\u202e",
    "mixture": " \u200b\u3164\n\u2800\ufe0f\u00ad\t\u0085",
    "format and controls": "\u202e\u2060\u0001\u200d\u007f\u202c",
    "fillers and selectors": "\u115f\u1160\uffa0\ufe00\ufe0e\ufe0f",
    "whitespace of every kind": "\u00a0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000 \t",
}

VISIBLE = {
    "emoji with VS16": "Tamam \u2764\ufe0f",
    "lone emoji with VS16": "\u2764\ufe0f",
    "ZWJ family": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "text around invisibles": "\u200ba\u200b",
    "hangul": "\uc548\ub155",
}


@pytest.mark.parametrize("content", BLANK.values(), ids=BLANK.keys())
def test_invisible_content_is_empty(shared_conn, shared_data, content):
    before = counts(shared_conn)
    error = refusal(lambda: send_as(shared_conn, "employee", shared_data, G1, content))
    assert error.sqlstate == "22004", error
    assert counts(shared_conn) == before
    # The table says the same, whoever writes it.
    with pytest.raises(psycopg.errors.CheckViolation) as caught, shared_conn.transaction():
        shared_conn.execute(
            "insert into messages (group_jid, sender_id, content) values (%s, %s, %s)",
            [G1, shared_data.employee, content],
        )
    assert caught.value.diag.constraint_name == "messages_content_not_blank"
    assert shared_conn.execute("select private.is_blank(%s)", [content]).fetchone()[0] is True


@pytest.mark.parametrize("content", VISIBLE.values(), ids=VISIBLE.keys())
def test_visible_content_is_accepted(shared_conn, shared_data, content):
    with acting_as(shared_conn, "employee", shared_data):  # rolled back
        row = shared_conn.execute("select content from send_message(%s, %s)", [G1, content])
        assert row.fetchone()[0] == content


def test_content_length_counts_code_points(conn, data):
    astral = "\U0001f697"  # 🚗: one code point, two UTF-16 units, four bytes
    row = send_as(conn, "employee", data, G1, astral * 65536)
    assert conn.execute(
        "select char_length(content), octet_length(content) from messages where id = %s",
        [row["id"]],
    ).fetchone() == (65536, 4 * 65536)
    before = counts(conn)
    error = refusal(lambda: send_as(conn, "employee", data, G1, astral * 65537))
    assert error.sqlstate == "22001"
    assert counts(conn) == before
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        conn.execute(
            "insert into messages (group_jid, sender_id, content) values (%s, %s, %s)",
            [G1, data.employee, astral * 65537],
        )
