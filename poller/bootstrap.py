"""Make a PostgreSQL database ready: Supabase compatibility, pgmq, then the migrations.

Safe to run again and concurrently: every step checks what is there first, each step commits on
its own, and an advisory lock keeps two bootstraps from interleaving.
"""

import logging
from dataclasses import dataclass, field

import psycopg
from pgmq.install import get_embedded_install_sql, get_embedded_sql_version
from psycopg import sql

from poller.errors import BootstrapError, ConfigError, DatabaseUnavailable
from poller.resources import load_sql, migrations

log = logging.getLogger(__name__)

_LOCK_KEY = "wa-poller bootstrap"


@dataclass
class BootstrapReport:
    compat_applied: bool = False
    pgmq_installed: str | None = None
    migrations_applied: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        applied = ", ".join(self.migrations_applied) or "none (up to date)"
        return [
            "supabase compatibility layer: "
            + ("applied" if self.compat_applied else "present (Supabase or earlier run)"),
            "pgmq: " + (f"installed {self.pgmq_installed}" if self.pgmq_installed else "present"),
            f"migrations applied: {applied}",
        ]


def connect(database_url: str) -> psycopg.Connection:
    """Open an autocommit connection, turning libpq's failures into one-line errors."""
    try:
        return psycopg.connect(database_url, autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid database URL: {_first_line(exc)}") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {_first_line(exc)}") from exc


def bootstrap(
    database_url: str,
    poller_password: str | None = None,
    session_store_password: str | None = None,
) -> BootstrapReport:
    report = BootstrapReport()
    with connect(database_url) as conn:
        conn.execute("select pg_advisory_lock(hashtext(%s))", [_LOCK_KEY])
        if not _exists(conn, "select to_regclass('auth.users') is not null"):
            _run_step(conn, "supabase compatibility layer", load_sql("supabase_compat"))
            report.compat_applied = True
        if not _exists(conn, "select to_regclass('pgmq.meta') is not null"):
            report.pgmq_installed = _install_pgmq(conn)
        report.migrations_applied = _apply_migrations(conn)
        if poller_password is not None:
            _enable_login(conn, "wa_poller", poller_password)
        if session_store_password is not None:
            _enable_login(conn, "wa_session_store", session_store_password)
        conn.execute("select pg_advisory_unlock(hashtext(%s))", [_LOCK_KEY])
    return report


def _enable_login(conn: psycopg.Connection, role: str, password: str) -> None:
    # Hashed here, so the password itself never reaches the server's logs.
    hashed = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    conn.execute(
        sql.SQL("alter role {} with login password {}").format(
            sql.Identifier(role), sql.Literal(hashed.decode())
        )
    )


def _install_pgmq(conn: psycopg.Connection) -> str:
    available = _exists(
        conn, "select exists (select 1 from pg_available_extensions where name = 'pgmq')"
    )
    if available:
        _run_step(conn, "pgmq extension", "create extension pgmq")
        return "extension"
    _run_step(conn, "pgmq SQL-only install", get_embedded_install_sql())
    return f"{get_embedded_sql_version()} (SQL-only)"


def _apply_migrations(conn: psycopg.Connection) -> list[str]:
    # The table as the Supabase CLI keeps it, so `supabase migration list` agrees with us.
    conn.execute("create schema if not exists supabase_migrations")
    conn.execute(
        "create table if not exists supabase_migrations.schema_migrations "
        "(version text primary key, statements text[], name text)"
    )
    done = {
        row[0] for row in conn.execute("select version from supabase_migrations.schema_migrations")
    }
    applied = []
    for migration in migrations():
        if migration.version in done:
            continue
        text = migration.sql()
        with conn.transaction():
            _execute(conn, f"migration {migration.path.name}", text)
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, statements, name) "
                "values (%s, %s, %s)",
                [migration.version, [text], migration.name],
            )
        log.info("applied migration %s", migration.path.name)
        applied.append(migration.path.name)
    return applied


def _run_step(conn: psycopg.Connection, what: str, text: str) -> None:
    with conn.transaction():
        _execute(conn, what, text)
    log.info("applied %s", what)


def _execute(conn: psycopg.Connection, what: str, text: str) -> None:
    try:
        conn.execute(text.encode())
    except psycopg.Error as exc:
        raise BootstrapError(f"{what} failed: {_first_line(exc)}") from exc


def _exists(conn: psycopg.Connection, query: str) -> bool:
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
