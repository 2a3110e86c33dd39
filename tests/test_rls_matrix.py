"""Every persona x every table x select/insert/update/delete: what is allowed works (touches the
target row), what is denied is denied (a 42501 error, or the row stays invisible/untouched)."""

import json

import psycopg
import pytest

from tests.personas import G1, G2, G_INACTIVE, PERSONAS, Seed, acting_as

OK, HIDDEN, DENIED = "ok", "hidden", "denied"

# The target rows all belong to the employee's team (Claims) and its group G1.
STATEMENTS: dict[str, dict[str, str]] = {
    "employee_groups": {
        "select": "select id from employee_groups where id = %(claims_team)s",
        "insert": "insert into employee_groups (name) values ('Renewals')",
        "update": "update employee_groups set name = 'Claims 2' where id = %(claims_team)s",
        "delete": "delete from employee_groups where id = %(claims_team)s",
    },
    "employee_group_members": {
        "select": "select user_id from employee_group_members where user_id = %(employee)s",
        "insert": "insert into employee_group_members (employee_group_id, user_id) "
        "values (%(sales_team)s, %(employee)s)",
        "update": "update employee_group_members set created_at = now() "
        "where user_id = %(employee)s",
        "delete": "delete from employee_group_members where user_id = %(employee)s",
    },
    "whatsapp_sessions": {
        "select": "select qr_code, config from whatsapp_sessions where id = %(session)s",
        "insert": "insert into whatsapp_sessions (phone_number) values ('905550000009')",
        "update": "update whatsapp_sessions set status = 'disconnected' where id = %(session)s",
        "delete": "delete from whatsapp_sessions where id = %(session)s",
    },
    "whatsapp_groups": {
        "select": "select jid from whatsapp_groups where jid = %(g1)s",
        "insert": "insert into whatsapp_groups (jid, name, session_id) "
        "values ('120363000000000099@g.us', 'Yeni', %(session)s)",
        "update": "update whatsapp_groups set name = 'Hasar' where jid = %(g1)s",
        # A group that has messages cannot be deleted at all (see the test below).
        "delete": "delete from whatsapp_groups where jid = %(g_inactive)s",
    },
    "group_assignments": {
        "select": "select id from group_assignments where id = %(g1_assignment)s",
        "insert": "insert into group_assignments (group_jid, employee_group_id) "
        "values (%(g2)s, %(claims_team)s)",
        "update": "update group_assignments set created_at = now() where id = %(g1_assignment)s",
        "delete": "delete from group_assignments where id = %(g1_assignment)s",
    },
    "message_receipts": {
        "select": "select participant from message_receipts where message_id = %(m1)s",
        "insert": "insert into message_receipts (message_id, participant) "
        "values (%(m1)s, '905552222222@s.whatsapp.net')",
        "update": "update message_receipts set read_at = now() where message_id = %(m1)s",
        "delete": "delete from message_receipts where message_id = %(m1)s",
    },
    "session_events": {
        "select": "select id from session_events where session_id = %(session)s",
        "insert": "insert into session_events (session_id, kind) "
        "values (%(session)s, 'logged_out')",
        "update": "update session_events set reason = 'x' where session_id = %(session)s",
        "delete": "delete from session_events where session_id = %(session)s",
    },
    "message_edits": {
        "select": "select id from message_edits where message_id = %(m1)s",
        "insert": "insert into message_edits (message_id, group_jid, kind, old_content, actor_id) "
        "values (%(m1)s, %(g1)s, 'revoke', 'ilk mesaj', %(employee)s)",
        "update": "update message_edits set status = 'failed' where message_id = %(m1)s",
        "delete": "delete from message_edits where message_id = %(m1)s",
    },
    "messages": {
        "select": "select id from messages where id = %(m1)s",
        "insert": "insert into messages (group_jid, sender_id, content) "
        "values (%(g1)s, %(employee)s, 'direct write')",
        "update": "update messages set status = 'read' where id = %(m1)s",
        "delete": "delete from messages where id = %(m1)s",
    },
}

_ACTIONS = ("select", "insert", "update", "delete")


def _row(*outcomes: str) -> dict[str, str]:
    return dict(zip(_ACTIONS, outcomes, strict=True))


_MEMBER_READS = _row(OK, DENIED, HIDDEN, HIDDEN)
_OUTSIDER = _row(HIDDEN, DENIED, HIDDEN, HIDDEN)
_ALL = _row(OK, OK, OK, OK)
_NOTHING = _row(DENIED, DENIED, DENIED, DENIED)

EXPECTED: dict[str, dict[str, dict[str, str]]] = {
    "anon": dict.fromkeys(STATEMENTS, _NOTHING),
    "employee": {
        "employee_groups": _MEMBER_READS,
        "employee_group_members": _MEMBER_READS,
        "whatsapp_sessions": _OUTSIDER,
        "whatsapp_groups": _MEMBER_READS,
        "group_assignments": _MEMBER_READS,
        "messages": _row(OK, DENIED, DENIED, DENIED),
        "message_receipts": _row(OK, DENIED, DENIED, DENIED),
        "session_events": _row(HIDDEN, DENIED, DENIED, DENIED),
        "message_edits": _row(OK, DENIED, DENIED, DENIED),
    },
    "other_employee": {
        "employee_groups": _OUTSIDER,
        "employee_group_members": _OUTSIDER,
        "whatsapp_sessions": _OUTSIDER,
        "whatsapp_groups": _OUTSIDER,
        "group_assignments": _OUTSIDER,
        "messages": _row(HIDDEN, DENIED, DENIED, DENIED),
        "message_receipts": _row(HIDDEN, DENIED, DENIED, DENIED),
        "session_events": _row(HIDDEN, DENIED, DENIED, DENIED),
        "message_edits": _row(HIDDEN, DENIED, DENIED, DENIED),
    },
    "admin": {
        **dict.fromkeys(STATEMENTS, _ALL),
        "messages": _row(OK, DENIED, DENIED, DENIED),
        "message_receipts": _row(OK, DENIED, DENIED, DENIED),
        # Written only by private.record_session_event, for the poller.
        "session_events": _row(OK, DENIED, DENIED, DENIED),
        # Written only by edit_message and revoke_message, and the poller's transitions.
        "message_edits": _row(OK, DENIED, DENIED, DENIED),
    },
    # It bypasses RLS, but has no privilege on the admins' session events, and reads the
    # audit of edits only.
    "service_role": {
        **dict.fromkeys(STATEMENTS, _ALL),
        "session_events": _NOTHING,
        "message_edits": _row(OK, DENIED, DENIED, DENIED),
    },
    "wa_poller": {
        "employee_groups": _NOTHING,
        "employee_group_members": _NOTHING,
        "whatsapp_sessions": _row(OK, DENIED, OK, DENIED),
        "whatsapp_groups": _row(OK, OK, OK, DENIED),
        "group_assignments": _NOTHING,
        "messages": _row(OK, DENIED, OK, DENIED),
        "message_receipts": _row(OK, OK, OK, DENIED),
        "session_events": _NOTHING,  # through private.record_session_event only
        "message_edits": _NOTHING,  # through the queue's transitions only
    },
}

CASES = [
    (persona, table, action) for persona in PERSONAS for table in STATEMENTS for action in _ACTIONS
]


def _params(s: Seed) -> dict[str, object]:
    return {**vars(s), "g1": G1, "g2": G2, "g_inactive": G_INACTIVE}


def attempt(conn: psycopg.Connection, persona: str, s: Seed, statement: str) -> str:
    try:
        with acting_as(conn, persona, s):
            cur = conn.execute(statement, _params(s))
            return OK if cur.rowcount > 0 else HIDDEN
    except psycopg.errors.InsufficientPrivilege:
        return DENIED


@pytest.mark.parametrize(("persona", "table", "action"), CASES)
def test_persona_table_action(shared_conn, shared_data, persona, table, action):
    outcome = attempt(shared_conn, persona, shared_data, STATEMENTS[table][action])
    assert outcome == EXPECTED[persona][table][action]


def test_the_target_rows_exist_for_the_superuser(conn, data):
    """Guards the matrix: a HIDDEN outcome means RLS hid a row that really is there."""
    for table, statements in STATEMENTS.items():
        assert conn.execute(statements["select"], _params(data)).rowcount == 1, table


def test_employee_sees_only_their_teams_rows(conn, data):
    with acting_as(conn, "employee", data):
        groups = {r[0] for r in conn.execute("select jid from whatsapp_groups")}
        messages = conn.execute("select count(*) from messages").fetchone()[0]
        teams = [r[0] for r in conn.execute("select name from employee_groups")]
    assert groups == {G1, "120363000000000003@g.us", "120363000000000004-1600000000@g.us"}
    assert messages == 1
    assert teams == ["Claims"]


def test_admin_flag_in_user_metadata_grants_nothing(conn, data):
    with acting_as(conn, "impostor", data):
        sessions = conn.execute("select count(*) from whatsapp_sessions").fetchone()[0]
        updated = conn.execute(
            "update whatsapp_groups set name = 'x' where jid = %s", [G1]
        ).rowcount
    assert (sessions, updated) == (0, 0)


def test_a_group_with_messages_cannot_be_deleted_even_by_an_admin(conn, data):
    """The message log is an audit trail: groups are deactivated, never deleted under it."""
    with pytest.raises(psycopg.errors.ForeignKeyViolation), acting_as(conn, "admin", data):
        conn.execute("delete from whatsapp_groups where jid = %s", [G1])


def test_poller_cannot_change_message_content_or_sender(conn, data):
    for column in ("content", "sender_id", "group_jid"):
        denied = pytest.raises(psycopg.errors.InsufficientPrivilege)
        with denied, acting_as(conn, "wa_poller", data):
            conn.execute(f"update messages set {column} = {column} where id = %s", [data.m1])


# The RPCs, each with every option it has that RLS or a persona decides (a mention of G1's
# participant, a scheduled send, a cancel of the employee's scheduled message, an edit and a
# delete of the employee's sent message): the allowed
# outcome works, the denied one is refused with its SQLSTATE.
RPC_CALLS = {
    "send_message": "select id from send_message(%(g1)s, 'persona', null, null, null, null, "
    "array['905551111111@s.whatsapp.net'], now() + interval '1 hour')",
    "send_to_groups": "select id from send_to_groups(array[%(g1)s], 'persona')",
    "cancel_message": "select id from cancel_message(%(scheduled)s)",
    "edit_message": "select id from edit_message(%(sent)s, 'düzeltildi')",
    "revoke_message": "select id from revoke_message(%(sent)s)",
}
RPC_EXPECTED = {
    "anon": dict.fromkeys(RPC_CALLS, "42501"),  # permission denied for function
    "employee": dict.fromkeys(RPC_CALLS, OK),
    # Not their team's group; not their message (answered as unknown).
    "other_employee": {
        "send_message": "PT403", "send_to_groups": "PT424", "cancel_message": "PT404",
        "edit_message": "PT404", "revoke_message": "PT404",
    },
    "admin": dict.fromkeys(RPC_CALLS, OK),
    "service_role": dict.fromkeys(RPC_CALLS, "42501"),  # not authenticated: no user in its JWT
    "wa_poller": dict.fromkeys(RPC_CALLS, "42501"),  # permission denied for function
}  # fmt: skip


@pytest.mark.parametrize("function", RPC_CALLS)
@pytest.mark.parametrize("persona", PERSONAS)
def test_persona_rpc(conn, data, persona, function):
    conn.execute(
        "update whatsapp_groups set participants = %s where jid = %s",
        [json.dumps([{"jid": "905551111111@s.whatsapp.net", "lid": None}]), G1],
    )
    scheduled = conn.execute(
        "with m as (insert into messages (group_jid, sender_id, content, status, send_at) "
        "values (%s, %s, 'plan', 'scheduled', now() + interval '1 hour') returning *) "
        "insert into private.scheduled_messages (message_id, group_jid, send_at) "
        "select id, group_jid, send_at from m returning message_id",
        [G1, data.employee],
    ).fetchone()[0]
    sent = conn.execute(
        "insert into messages (group_jid, sender_id, content, status, wa_message_id, sent_at) "
        "values (%s, %s, 'gitti', 'sent', '3EB0PERSONA', now()) returning id",
        [G1, data.employee],
    ).fetchone()[0]
    try:
        with acting_as(conn, persona, data):
            params = {"g1": G1, "scheduled": scheduled, "sent": sent}
            conn.execute(RPC_CALLS[function], params).fetchall()
        outcome = OK
    except psycopg.Error as error:
        outcome = error.sqlstate
    assert outcome == RPC_EXPECTED[persona][function]
