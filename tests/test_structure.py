"""Structural guarantees read from the catalog of the migrated database."""

import psycopg
import pytest

from poller.resources import migrations


def rows(conn: psycopg.Connection, query: str) -> list[tuple]:
    return conn.execute(query).fetchall()


def test_every_table_in_public_has_rls_enabled(conn):
    tables = rows(
        conn,
        "select c.relname, c.relrowsecurity from pg_class c "
        "where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')",
    )
    assert len(tables) == 7
    assert [name for name, rls in tables if not rls] == []


def test_every_security_definer_function_has_a_fixed_search_path(conn):
    definers = rows(
        conn,
        "select p.oid::regprocedure::text, p.proconfig from pg_proc p "
        "where p.prosecdef and p.pronamespace not in "
        "('pg_catalog'::regnamespace, 'information_schema'::regnamespace)",
    )
    assert definers, "expected the RPC body and the RLS helpers to be SECURITY DEFINER"
    unfixed = [
        name
        for name, config in definers
        if not any(c.startswith("search_path=") for c in (config or []))
    ]
    assert unfixed == []


def test_every_function_of_ours_has_an_empty_search_path(conn):
    funcs = rows(
        conn,
        "select p.oid::regprocedure::text, p.proconfig from pg_proc p "
        "where p.pronamespace in ('public'::regnamespace, 'private'::regnamespace)",
    )
    assert [name for name, config in funcs if 'search_path=""' not in (config or [])] == []


def test_anon_can_execute_no_function_in_public(conn):
    executable = rows(
        conn,
        "select p.oid::regprocedure::text from pg_proc p "
        "where p.pronamespace = 'public'::regnamespace "
        "and has_function_privilege('anon', p.oid, 'execute')",
    )
    assert executable == []


def test_authenticated_can_execute_send_message_and_nothing_in_pgmq(conn):
    can = conn.execute(
        "select has_function_privilege('authenticated', "
        "'public.send_message(text, text, uuid)', 'execute')"
    ).fetchone()[0]
    assert can
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


def test_wa_poller_can_read_and_acknowledge_the_queue(conn, data):
    conn.execute(
        "select pgmq.send('whatsapp_outbound', '{\"message_id\": \"x\"}'::jsonb, "
        '\'{"x-pgmq-group": "120363000000000001@g.us"}\'::jsonb)'
    )
    with conn.transaction(force_rollback=True):
        conn.execute("set local role wa_poller")
        read = conn.execute("select msg_id from pgmq.read_grouped_rr('whatsapp_outbound', 30, 10)")
        msg_id = read.fetchone()[0]
        conn.execute("select pgmq.set_vt('whatsapp_outbound', %s, 5)", [msg_id])
        assert conn.execute("select pgmq.archive('whatsapp_outbound', %s)", [msg_id]).fetchone()[0]
        assert (
            conn.execute(
                "select count(*) from pgmq.a_whatsapp_outbound where msg_id = %s", [msg_id]
            ).fetchone()[0]
            == 1
        )
        conn.execute("select queue_length from pgmq.metrics('whatsapp_outbound')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create table public.sneaky (id int)")


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
        "is_admin",
        "my_employee_group_ids",
        "my_group_jids",
        "send_message",
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
