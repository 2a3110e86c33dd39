"""`wa-poller db bootstrap`: from a bare database to a ready one, safely twice and concurrently,
as a superuser on plain PostgreSQL and as `postgres` on the Supabase emulation, with one-line
errors for a bad URL, a server that is down, a missing right or a pgmq older than 1.5.1."""

import subprocess
import sys
import threading
from collections.abc import Iterator

import psycopg
import pytest

from poller.bootstrap import MIN_PGMQ, _version_tuple, bootstrap
from poller.errors import BootstrapError
from poller.localpg import free_port
from poller.resources import load_sql, migrations
from tests import pgmq_versions
from tests.conftest import (
    PGMQ_VERSION,
    postgres_url,
    server_url,
    supabase_database,
)

ALL_MIGRATIONS = [m.path.name for m in migrations()]


@pytest.fixture
def bare_url(pg_server) -> Iterator[str]:
    """A new, empty database (not cloned from the template)."""
    with psycopg.connect(server_url(pg_server), autocommit=True) as conn:
        conn.execute("drop database if exists wa_bare with (force)")
        conn.execute("create database wa_bare")
    yield server_url(pg_server, "wa_bare")
    with psycopg.connect(server_url(pg_server), autocommit=True) as conn:
        conn.execute("drop database wa_bare with (force)")


@pytest.fixture
def supabase_url(pg_server) -> Iterator[str]:
    """A new database as a Supabase project has it before its migrations (superuser's URL)."""
    url = supabase_database(pg_server, "wa_supa")
    yield url
    with psycopg.connect(server_url(pg_server), autocommit=True) as conn:
        conn.execute("drop database wa_supa with (force)")


@pytest.fixture
def rightless_role(pg_server) -> Iterator[str]:
    """A login role with no right beyond PUBLIC's."""
    with psycopg.connect(server_url(pg_server), autocommit=True) as conn:
        conn.execute("drop role if exists wa_rightless")
        conn.execute("create role wa_rightless login")
    yield "wa_rightless"
    with psycopg.connect(server_url(pg_server), autocommit=True) as conn:
        conn.execute("drop role wa_rightless")


def as_role(url: str, role: str) -> str:
    return postgres_url(url).replace("postgres@", f"{role}@", 1)


def wa_poller(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "poller.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_bootstrap_twice_from_the_command_line(bare_url):
    first = wa_poller("db", "bootstrap", "--database-url", bare_url)
    assert first.returncode == 0, first.stderr
    assert "supabase compatibility layer: applied" in first.stdout
    assert "pgmq: installed" in first.stdout
    assert ", ".join(ALL_MIGRATIONS) in first.stdout

    second = wa_poller("db", "bootstrap", "--database-url", bare_url)
    assert second.returncode == 0, second.stderr
    assert "migrations applied: none (up to date)" in second.stdout
    assert "pgmq: present" in second.stdout

    with psycopg.connect(bare_url) as conn:
        queues = conn.execute("select queue_name from pgmq.meta").fetchall()
        recorded = conn.execute("select count(*) from supabase_migrations.schema_migrations")
        assert queues == [("whatsapp_outbound",)]
        assert recorded.fetchone()[0] == len(ALL_MIGRATIONS)


def test_concurrent_bootstraps_do_not_collide(bare_url):
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(bootstrap(bare_url))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(len(r.migrations_applied) for r in reports)
    assert applied == [0, 0, len(ALL_MIGRATIONS)]


def test_the_compatibility_layer_runs_twice(bare_url):
    with psycopg.connect(bare_url, autocommit=True) as conn:
        conn.execute(load_sql("supabase_compat").encode())
        conn.execute(load_sql("supabase_compat").encode())
    report = bootstrap(bare_url)
    assert report.migrations_applied == ALL_MIGRATIONS


def test_bootstrap_as_postgres_on_the_supabase_emulation(supabase_url):
    done = wa_poller("db", "bootstrap", "--database-url", postgres_url(supabase_url))
    assert done.returncode == 0, done.stderr
    assert "supabase compatibility layer: present" in done.stdout
    assert "pgmq: present" in done.stdout
    assert ", ".join(ALL_MIGRATIONS) in done.stdout

    with psycopg.connect(supabase_url) as conn:
        not_postgres = conn.execute(
            "select c.oid::regclass::text, c.relowner::regrole::text from pg_class c "
            "where c.relnamespace in ('public'::regnamespace, 'private'::regnamespace) "
            "and c.relkind in ('r', 'v', 'S', 'p') and c.relowner <> 'postgres'::regrole"
        ).fetchall()
        assert not_postgres == []
        recorded = conn.execute("select count(*) from supabase_migrations.schema_migrations")
        assert recorded.fetchone()[0] == len(ALL_MIGRATIONS)
    again = bootstrap(postgres_url(supabase_url))
    assert again.migrations_applied == []


def test_postgres_is_not_a_superuser_but_has_supabases_rights(supabase_url):
    with psycopg.connect(postgres_url(supabase_url)) as conn:
        attributes = conn.execute(
            "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication "
            "from pg_roles where rolname = 'postgres'"
        ).fetchone()
        assert attributes == (False, True, True, True, True)
        member_of = {
            row[0]
            for row in conn.execute(
                "select b.rolname from pg_auth_members m join pg_roles b on b.oid = m.roleid "
                "where m.member = 'postgres'::regrole"
            )
        }
        assert {"anon", "authenticated", "service_role", "pg_read_all_data"} <= member_of
        rights = conn.execute(
            "select has_database_privilege(current_database(), 'create'), "
            "has_schema_privilege('auth', 'usage'), has_schema_privilege('auth', 'create'), "
            "has_schema_privilege('extensions', 'create'), "
            "has_schema_privilege('storage', 'create'), "
            "has_table_privilege('auth.users', 'select, insert, update, delete, references, "
            "trigger'), "
            "pg_get_userbyid((select relowner from pg_class where oid = 'auth.users'::regclass))"
        ).fetchone()
        assert rights == (True, True, False, True, False, True, "supabase_auth_admin")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create extension pageinspect")


def test_postgres_needs_a_superuser_for_the_compatibility_layer(bare_url):
    done = wa_poller("db", "bootstrap", "--database-url", postgres_url(bare_url))
    assert done.returncode == 1
    assert done.stderr.startswith("wa-poller: error: supabase compatibility layer needed")
    assert "role postgres is not a superuser" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_role_without_create_on_the_database_is_told_so(supabase_url, rightless_role):
    done = wa_poller("db", "bootstrap", "--database-url", as_role(supabase_url, rightless_role))
    assert done.returncode == 1
    assert done.stderr.startswith(
        "wa-poller: error: role wa_rightless has no CREATE privilege on database wa_supa"
    )
    assert "(the migrations create schemas)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_pgmq_missing_and_not_installable_is_told_so(bare_url, rightless_role):
    with psycopg.connect(bare_url, autocommit=True) as conn:
        conn.execute(load_sql("supabase_compat").encode())
        conn.execute(load_sql("supabase_compat_realtime").encode())
    with pytest.raises(BootstrapError, match=r"no CREATE privilege .*pgmq SQL-only install"):
        bootstrap(as_role(bare_url, rightless_role))


def test_a_pgmq_without_headers_is_refused_naming_what_it_lacks(bare_url):
    # pgmq 1.4's surface: 1.5.1's without the headers variants of send and send_batch.
    with psycopg.connect(bare_url, autocommit=True) as conn:
        conn.execute(load_sql("supabase_compat").encode())
        conn.execute(load_sql("supabase_compat_realtime").encode())
        conn.execute(pgmq_versions.install_sql("1.5.1").encode())
        for signature in (
            "send(text, jsonb, jsonb)",
            "send(text, jsonb, jsonb, integer)",
            "send(text, jsonb, jsonb, timestamp with time zone)",
        ):
            conn.execute(f"drop function pgmq.{signature}")
    done = wa_poller("db", "bootstrap", "--database-url", bare_url)
    assert done.returncode == 1
    assert done.stderr.startswith("wa-poller: error: pgmq (SQL-only install) is older than 1.5.1")
    assert "pgmq.send(text, jsonb, jsonb, integer)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with psycopg.connect(bare_url) as conn:
        assert conn.execute("select to_regclass('public.messages')").fetchone()[0] is None


@pytest.mark.parametrize(
    ("version", "accepted"),
    [("1.4.4", False), ("1.5.0", False), ("1.5.1", True), ("1.10.0", True), ("1.13.0", True)],
)
def test_extension_versions_compare_as_numbers(version, accepted):
    assert (_version_tuple(version) >= MIN_PGMQ) is accepted


@pytest.mark.parametrize("version", pgmq_versions.VERSIONS)
def test_the_pgmq_surface_under_test(bare_url, version):
    with psycopg.connect(bare_url, autocommit=True) as conn:
        conn.execute(pgmq_versions.install_sql(version).encode())
        conn.execute("select pgmq.create('probe')")
        functions, columns = pgmq_versions.surface(conn)
    queue = ["msg_id", "read_ct", "enqueued_at", "vt", "message", "headers"]
    archive = ["msg_id", "read_ct", "enqueued_at", "archived_at", "vt", "message", "headers"]
    assert "send(queue_name text, msg jsonb, headers jsonb, delay integer)" in functions
    if version == "1.5.1":
        assert columns["q_probe"] == queue
        assert columns["a_probe"] == archive
        assert columns["message_record"] == queue
        assert "pop(queue_name text)" in functions
        with psycopg.connect(bare_url) as conn:
            still_there = [
                signature
                for signature in pgmq_versions.FUNCTIONS_1_5_1_LACKS
                if conn.execute("select to_regprocedure(%s)", [f"pgmq.{signature}"]).fetchone()[0]
            ]
        assert still_there == []
        assert not set(pgmq_versions.TABLES_1_5_1_LACKS) & set(columns)
    else:
        assert "last_read_at" in columns["q_probe"]
        assert "read_grouped(queue_name text, vt integer, qty integer)" in functions


def test_the_template_runs_the_selected_pgmq(conn):
    has_last_read_at = conn.execute(
        "select exists (select 1 from pg_attribute where attrelid = "
        "'pgmq.q_whatsapp_outbound'::regclass and attname = 'last_read_at')"
    ).fetchone()[0]
    assert has_last_read_at is (PGMQ_VERSION != "1.5.1")
    owner = conn.execute(
        "select relowner::regrole::text from pg_class "
        "where oid = 'pgmq.q_whatsapp_outbound'::regclass"
    ).fetchone()[0]
    assert owner == "postgres"


def test_poller_password_enables_login_for_wa_poller(bare_url, pg_server):
    bootstrap(bare_url, poller_password="s3cret")
    url = f"postgresql://wa_poller:s3cret@{pg_server.host}:{pg_server.port}/wa_bare"
    with psycopg.connect(url) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "wa_poller"


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("not a url", 2, "invalid database URL"),
        ("postgresql://postgres@127.0.0.1:{port}/postgres", 1, "cannot connect to the database"),
    ],
)
def test_bad_url_or_down_server_gives_one_line_and_nonzero_exit(url, code, message):
    done = wa_poller("db", "bootstrap", "--database-url", url.format(port=free_port()))
    assert done.returncode == code
    assert done.stderr.startswith(f"wa-poller: error: {message}")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_missing_url_is_a_clear_error(monkeypatch):
    done = subprocess.run(
        [sys.executable, "-m", "poller.cli", "db", "bootstrap"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 2
    assert "no database URL" in done.stderr
