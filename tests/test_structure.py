"""Structural guarantees read from the catalog of the migrated database."""

import psycopg
import pytest

from poller.resources import migrations

# What wa_poller may execute in `private`, in one place: one function per transition of the
# outbound queue (take, sent, retry, fail, expire, give back, extend, discard) and the wake-up,
# its only access to the queue; the backlog for its metrics; and the session events, its only
# access to public.session_events.
POLLER_FUNCTIONS = [
    "private.take_outbound(text,uuid[],integer[],bigint[],integer,integer,double precision)",
    "private.outbound_sent(uuid[],bigint[],text[],timestamp with time zone[])",
    "private.outbound_retry(uuid[],bigint[],text[],double precision[])",
    "private.outbound_fail(uuid[],bigint[],text[])",
    "private.outbound_give_back(uuid[],bigint[],double precision[])",
    "private.outbound_extend(bigint[],double precision)",
    "private.arm_outbound_listener()",
    "private.outbound_backlog(text)",
    "private.record_session_event(text,uuid,text,text,timestamp with time zone)",
]
# What PostgREST exposes, one function per name (tests/test_rls_matrix.py calls each as every
# persona).
API_FUNCTIONS = [
    "public.send_message(text, text, uuid, text, text, uuid, text[], timestamptz)",
    "public.send_to_groups(text[], text, uuid, text, text, timestamptz)",
    "public.cancel_message(uuid)",
    "public.edit_message(uuid, text)",
    "public.revoke_message(uuid)",
]
# Granted to PUBLIC: the check constraint messages_content_not_blank calls it, and a CHECK runs
# with the rights of whoever writes the row (the poller updates statuses). It only classifies
# text.
EVERYONE_FUNCTIONS = ["private.is_blank(text)"]
# The search_path of every function in public and private: nothing resolves through pg_temp
# before pg_catalog (pg_temp is searched first for types and relations unless named).
SEARCH_PATH = "search_path=pg_catalog, pg_temp"


def rows(conn: psycopg.Connection, query: str) -> list[tuple]:
    return conn.execute(query).fetchall()


def test_every_table_in_public_has_rls_enabled(conn):
    tables = rows(
        conn,
        "select c.relname, c.relrowsecurity from pg_class c "
        "where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')",
    )
    assert len(tables) == 10
    assert [name for name, rls in tables if not rls] == []


def search_path_of(config: list[str] | None) -> list[str] | None:
    for setting in config or []:
        if setting.startswith("search_path="):
            return [part.strip() for part in setting.removeprefix("search_path=").split(",")]
    return None


def test_no_security_definer_function_searches_pg_temp_first(conn):
    """Finding 1: with no search_path, or one that does not name pg_temp (even ''), PostgreSQL
    looks up types and relations in the caller's pg_temp FIRST, as the function's owner."""
    definers = rows(
        conn,
        "select p.oid::regprocedure::text, p.proconfig from pg_proc p "
        "where p.prosecdef and p.pronamespace not in "
        "('pg_catalog'::regnamespace, 'information_schema'::regnamespace)",
    )
    assert definers, "expected the RPC body and the RLS helpers to be SECURITY DEFINER"
    offenders = [
        (name, config)
        for name, config in definers
        if (path := search_path_of(config)) is None or not path or path[-1] != "pg_temp"
    ]
    assert offenders == []


def test_every_function_of_ours_searches_pg_catalog_then_pg_temp(conn):
    funcs = rows(
        conn,
        "select p.oid::regprocedure::text, p.proconfig from pg_proc p "
        "where p.pronamespace in ('public'::regnamespace, 'private'::regnamespace)",
    )
    assert funcs
    assert [(name, config) for name, config in funcs if SEARCH_PATH not in (config or [])] == []


def test_anon_can_execute_no_function_in_public(conn):
    executable = rows(
        conn,
        "select p.oid::regprocedure::text from pg_proc p "
        "where p.pronamespace = 'public'::regnamespace "
        "and has_function_privilege('anon', p.oid, 'execute')",
    )
    assert executable == []


def test_authenticated_can_execute_send_message_and_nothing_in_pgmq(conn):
    for rpc in API_FUNCTIONS:
        can = conn.execute(
            "select has_function_privilege('authenticated', %s, 'execute')", [rpc]
        ).fetchone()[0]
        assert can, rpc
    in_pgmq = rows(
        conn,
        "select p.oid::regprocedure::text from pg_proc p "
        "where p.pronamespace = 'pgmq'::regnamespace "
        "and (has_function_privilege('authenticated', p.oid, 'execute') "
        "  or has_function_privilege('anon', p.oid, 'execute'))",
    )
    assert in_pgmq == []
    schema = conn.execute(
        "select has_schema_privilege('authenticated', 'pgmq', 'usage'), "
        "has_schema_privilege('anon', 'pgmq', 'usage')"
    ).fetchone()
    assert schema == (False, False)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_touch_the_queue_tables(conn, role):
    for table in ("pgmq.q_whatsapp_outbound", "pgmq.a_whatsapp_outbound", "pgmq.meta"):
        for privilege in ("select", "insert", "update", "delete"):
            assert not conn.execute(
                "select has_table_privilege(%s, %s, %s)", [role, table, privilege]
            ).fetchone()[0], (role, table, privilege)


def test_wa_poller_is_least_privilege(conn):
    role = conn.execute(
        "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles "
        "where rolname = 'wa_poller'"
    ).fetchone()
    assert role == (False, False, False, False)
    checks = conn.execute(
        "select has_table_privilege('wa_poller', 'auth.users', 'select'), "
        "has_schema_privilege('wa_poller', 'public', 'create'), "
        "has_schema_privilege('wa_poller', 'pgmq', 'create'), "
        "has_schema_privilege('wa_poller', 'auth', 'usage'), "
        "has_function_privilege('wa_poller', 'pgmq.send(text, jsonb, jsonb)', 'execute') "
        "  and has_table_privilege('wa_poller', 'pgmq.q_whatsapp_outbound', 'insert'), "
        "has_table_privilege('wa_poller', 'pgmq.q_whatsapp_outbound', 'truncate')"
    ).fetchone()
    assert checks == (False, False, False, False, False, False)


def test_wa_poller_takes_and_acknowledges_only_through_the_projects_functions(conn, data):
    from tests.personas import G1, send_as

    sent = send_as(conn, "employee", data, G1, "kuyrukta")
    conn.execute(
        "update whatsapp_sessions set lease_owner = 'structure-test', "
        "lease_expires_at = now() + interval '1 minute'"
    )
    with conn.transaction(force_rollback=True):
        conn.execute("set local role wa_poller")
        taken = conn.execute(
            "select msg_id, message_id from private.take_outbound("
            "'structure-test', %s, array[10], '{}'::bigint[], 30, 10, 3600)",
            [[data.session]],
        ).fetchall()
        assert [m for _, m in taken] == [sent["id"]]
        msg_id = taken[0][0]
        for bypass in (
            "select * from pgmq.read('whatsapp_outbound', 30, 10)",
            f"select pgmq.archive('whatsapp_outbound', {msg_id}::bigint)",
            f"select pgmq.delete('whatsapp_outbound', {msg_id}::bigint)",
            f"update pgmq.q_whatsapp_outbound set vt = now() where msg_id = {msg_id}",
            f"delete from pgmq.q_whatsapp_outbound where msg_id = {msg_id}",
            f"insert into pgmq.a_whatsapp_outbound (msg_id, vt, message) "
            f"values ({msg_id}, now(), '{{}}')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(bypass)
        archived = conn.execute(
            "select * from private.outbound_sent(%s, %s, %s, %s)",
            [[sent["id"]], [msg_id], ["3EB0ABC"], [sent["created_at"]]],
        ).fetchall()
        assert archived == [(msg_id,)]
        conn.execute("reset role")
        assert conn.execute(
            "select status::text, wa_message_id from messages where id = %s", [sent["id"]]
        ).fetchone() == ("sent", "3EB0ABC")
        assert conn.execute(
            "select (select count(*) from pgmq.q_whatsapp_outbound where msg_id = %(m)s), "
            "(select count(*) from pgmq.a_whatsapp_outbound where msg_id = %(m)s)",
            {"m": msg_id},
        ).fetchone() == (0, 1)
        conn.execute("set local role wa_poller")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create table public.sneaky (id int)")


def test_wa_poller_has_no_privilege_on_anything_in_pgmq(conn):
    """Finding 7: no table, column, sequence, schema or function privilege in pgmq, so the
    poller can neither forge, drop, hide nor lock a job but through the project's functions."""
    tables = rows(
        conn,
        "select c.oid::regclass::text, c.relkind from pg_class c "
        "where c.relnamespace = 'pgmq'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S')",
    )
    assert {"pgmq.q_whatsapp_outbound", "pgmq.a_whatsapp_outbound", "pgmq.meta"} <= {
        name for name, _ in tables
    }
    granted = []
    for table, kind in tables:
        if kind == "S":
            checks = [("has_sequence_privilege", p) for p in ("select", "usage", "update")]
        else:
            checks = [
                ("has_table_privilege", p)
                for p in (
                    "select",
                    "insert",
                    "update",
                    "delete",
                    "truncate",
                    "references",
                    "trigger",
                )
            ] + [
                ("has_any_column_privilege", p)
                for p in ("select", "insert", "update", "references")
            ]
        for function, privilege in checks:
            if conn.execute(
                f"select {function}('wa_poller', %s, %s)", [table, privilege]
            ).fetchone()[0]:
                granted.append((table, function, privilege))
    assert granted == []
    assert conn.execute(
        "select has_schema_privilege('wa_poller', 'pgmq', 'usage'), "
        "has_schema_privilege('wa_poller', 'pgmq', 'create')"
    ).fetchone() == (False, False)
    assert (
        rows(
            conn,
            "select p.oid::regprocedure::text from pg_proc p "
            "where p.pronamespace = 'pgmq'::regnamespace "
            "and has_function_privilege('wa_poller', p.oid, 'execute')",
        )
        == []
    )


def test_wa_poller_executes_exactly_the_queue_functions_in_private(conn):
    executable = rows(
        conn,
        "select p.oid::regprocedure::text from pg_proc p "
        "where p.pronamespace = 'private'::regnamespace "
        "and has_function_privilege('wa_poller', p.oid, 'execute') order by 1",
    )
    assert sorted(r[0] for r in executable) == sorted(POLLER_FUNCTIONS + EVERYONE_FUNCTIONS)


def test_api_roles_cannot_truncate(conn):
    for table in ("messages", "whatsapp_groups", "whatsapp_sessions", "group_assignments"):
        for role in ("anon", "authenticated"):
            assert not conn.execute(
                "select has_table_privilege(%s, %s, 'truncate')", [role, f"public.{table}"]
            ).fetchone()[0]


def test_every_foreign_key_has_an_index_that_leads_with_it(conn):
    unindexed = rows(
        conn,
        """
        select c.conrelid::regclass::text, c.conname from pg_constraint c
        where c.contype = 'f' and c.connamespace = 'public'::regnamespace
          and not exists (
            select 1 from pg_index i
            where i.indrelid = c.conrelid
              and (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey
          )
        """,
    )
    assert unindexed == []


def test_messages_are_in_the_realtime_publication(conn):
    assert rows(
        conn,
        "select schemaname, tablename from pg_publication_tables "
        "where pubname = 'supabase_realtime'",
    ) == [("public", "messages")]


def test_studio_views_are_security_invoker_and_hidden_from_the_api(conn):
    views = rows(
        conn,
        "select c.relname, c.reloptions from pg_class c "
        "where c.relnamespace = 'public'::regnamespace and c.relkind = 'v' order by 1",
    )
    assert views == [
        ("failed_messages", ["security_invoker=true"]),
        ("messages_needing_attention", ["security_invoker=true"]),
        ("whatsapp_sessions_overview", ["security_invoker=true"]),
    ]
    for view, _ in views:
        for role in ("anon", "authenticated"):
            assert not conn.execute(
                "select has_table_privilege(%s, %s, 'select')", [role, f"public.{view}"]
            ).fetchone()[0]


def test_studio_views_report_queue_depth_and_failures(conn, data):
    from tests.personas import G1, send_as

    send_as(conn, "employee", data, G1, "bekliyor")
    conn.execute(
        "update messages set status = 'failed', error_log = 'not a participant' where id = %s",
        [data.m2],
    )
    overview = conn.execute(
        "select queue_depth, pending_messages, failed_messages, active_groups "
        "from whatsapp_sessions_overview where id = %s",
        [data.session],
    ).fetchone()
    # pending: the seeded m1 and the new one; failed: m2.
    assert overview == (1, 2, 1, 4)
    failed = rows(conn, "select id, error_log, group_name from failed_messages")
    assert failed == [(data.m2, "not a participant", "Satış")]


def test_every_migration_is_recorded_as_the_supabase_cli_records_it(conn):
    recorded = rows(
        conn, "select version, name from supabase_migrations.schema_migrations order by version"
    )
    assert recorded == [(m.version, m.name) for m in migrations()]


def test_the_api_roles_may_execute_only_the_known_private_functions(conn):
    """USAGE on `private` is granted for the RLS helpers; a new function there would be callable
    by every signed-in user unless revoked, so the list is pinned here."""
    callable_ = rows(
        conn,
        "select p.proname::text from pg_proc p where p.pronamespace = 'private'::regnamespace "
        "and (has_function_privilege('authenticated', p.oid, 'execute') "
        "  or has_function_privilege('anon', p.oid, 'execute')) order by 1",
    )
    assert [r[0] for r in callable_] == [
        "cancel_message",
        "edit_message",
        "is_admin",
        "is_blank",
        "my_employee_group_ids",
        "my_group_jids",
        "revoke_message",
        "send_message",
        "send_to_groups",
    ]


def test_a_group_with_messages_cannot_be_rekeyed(conn, data):
    from tests.personas import G1, acting_as

    for persona in ("admin", "service_role"):
        with pytest.raises(psycopg.errors.ForeignKeyViolation), acting_as(conn, persona, data):
            conn.execute("update whatsapp_groups set jid = '999@g.us' where jid = %s", [G1])
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, "wa_poller", data):
        conn.execute("update whatsapp_groups set jid = '999@g.us' where jid = %s", [G1])


def test_wa_poller_cannot_rewrite_a_queued_payload(conn, data):
    from tests.personas import G1, send_as

    send_as(conn, "employee", data, G1, "dokunulmaz")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("set local role wa_poller")
        conn.execute("update pgmq.q_whatsapp_outbound set message = '{}', headers = '{}'")


def test_the_api_has_exactly_one_function_per_rpc_name(conn):
    """PostgREST picks an overload by its arguments' names and refuses ambiguous ones: the old
    three-argument send_message is gone, so every call resolves to the one with the options."""
    functions = rows(
        conn,
        "select p.oid::regprocedure::text from pg_proc p "
        "where p.pronamespace = 'public'::regnamespace order by 1",
    )
    pinned = conn.execute(
        "select to_regprocedure(f)::text from unnest(%s::text[]) f order by 1", [API_FUNCTIONS]
    ).fetchall()
    assert functions == pinned
