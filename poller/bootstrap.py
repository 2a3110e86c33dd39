"""Make a PostgreSQL database ready: Supabase compatibility, pgmq, then the migrations.

Safe to run again and concurrently: every step checks what is there first, each step commits on
its own, and an advisory lock keeps two bootstraps from interleaving.

On Supabase (or its emulation) it runs as `postgres`, which is not a superuser: the
compatibility layer and pgmq are already there and are skipped, and the migrations create
objects owned by `postgres`, as `supabase db push` does. On plain PostgreSQL the first run needs
a superuser (the compatibility layer creates roles). A role that lacks a right a step needs gets
a one-line error naming the right, before that step changes anything.
"""

import logging
from dataclasses import dataclass, field

import psycopg
from pgmq.install import get_embedded_install_sql, get_embedded_sql_version
from psycopg import sql

from poller.errors import BootstrapError, ConfigError, DatabaseUnavailable
from poller.resources import SQL_DIR, load_sql, migrations

log = logging.getLogger(__name__)

_LOCK_KEY = "wa-poller bootstrap"
# The oldest pgmq whose surface the project uses (what hosted Supabase ships today).
MIN_PGMQ = (1, 5, 1)
# The realtime schema's shapes, kept apart from the rest of the compatibility layer.
_REALTIME_COMPAT = "supabase_compat_realtime"
# Catalog look-ups, not to_regclass: they answer even for a role without USAGE on the schema.
_RELATION_EXISTS = (
    "select exists (select 1 from pg_catalog.pg_class c join pg_catalog.pg_namespace n "
    "on n.oid = c.relnamespace where n.nspname = %s and c.relname = %s)"
)
_SEND_WITH_HEADERS = (
    "select exists (select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n "
    "on n.oid = p.pronamespace where n.nspname = 'pgmq' and p.proname = 'send' "
    "and pg_catalog.oidvectortypes(p.proargtypes) = 'text, jsonb, jsonb, integer')"
)


@dataclass
class BootstrapReport:
    compat_applied: bool = False
    pgmq_installed: str | None = None
    pgmq_version: str | None = None
    migrations_applied: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        applied = ", ".join(self.migrations_applied) or "none (up to date)"
        present = f"present ({self.pgmq_version})" if self.pgmq_version else "present"
        return [
            "supabase compatibility layer: "
            + ("applied" if self.compat_applied else "present (Supabase or earlier run)"),
            "pgmq: " + (f"installed {self.pgmq_installed}" if self.pgmq_installed else present),
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
        report.compat_applied = _apply_compat(conn)
        if not _exists(conn, _RELATION_EXISTS, ["pgmq", "meta"]):
            report.pgmq_installed = _install_pgmq(conn)
        report.pgmq_version = check_pgmq_version(conn)
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


def _apply_compat(conn: psycopg.Connection) -> bool:
    """The compatibility layer when this is not a Supabase database (no auth.users), and the
    realtime shapes when they are missing; both only a superuser can apply (they make roles)."""
    texts = []
    if not _exists(conn, _RELATION_EXISTS, ["auth", "users"]):
        texts.append(load_sql("supabase_compat"))
    realtime_file = SQL_DIR / f"{_REALTIME_COMPAT}.sql"
    if realtime_file.exists() and not _exists(conn, _RELATION_EXISTS, ["realtime", "messages"]):
        texts.append(load_sql(_REALTIME_COMPAT))
    if not texts:
        return False
    if not _exists(conn, "select rolsuper from pg_roles where rolname = current_user"):
        raise BootstrapError(
            f"supabase compatibility layer needed (no auth.users or realtime.messages: not a "
            f"Supabase database) but role {_current_user(conn)} is not a superuser: run "
            f"bootstrap once with a superuser's URL"
        )
    with conn.transaction():
        for text in texts:
            _execute(conn, "supabase compatibility layer", text)
    log.info("applied supabase compatibility layer")
    return True


def _install_pgmq(conn: psycopg.Connection) -> str:
    available = _exists(
        conn, "select exists (select 1 from pg_available_extensions where name = 'pgmq')"
    )
    if available:
        try:
            _run_step(conn, "pgmq extension", "create extension pgmq")
        except BootstrapError as exc:
            if isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                raise BootstrapError(
                    f"pgmq is not installed and role {_current_user(conn)} may not create the "
                    f"extension: enable pgmq as a superuser (on Supabase: Database > "
                    f"Extensions) and run bootstrap again"
                ) from exc
            raise
        return "extension"
    _require_create_on_database(conn, "the pgmq SQL-only install creates schema pgmq")
    _run_step(conn, "pgmq SQL-only install", get_embedded_install_sql())
    return f"{get_embedded_sql_version()} (SQL-only)"


def check_pgmq_version(conn: psycopg.Connection) -> str:
    """The installed pgmq's version, refusing one older than 1.5.1. An extension says its
    version; the SQL-only install does not, so its surface tells: 1.5 added message headers,
    `pgmq.send(text, jsonb, jsonb, integer)`."""
    row = conn.execute("select extversion from pg_extension where extname = 'pgmq'").fetchone()
    if row is not None:
        version = str(row[0])
        if _version_tuple(version) < MIN_PGMQ:
            raise BootstrapError(
                f"pgmq {version} is too old: this project needs pgmq 1.5.1 or newer; run "
                f"`alter extension pgmq update` (on Supabase, upgrade the project's Postgres "
                f"if that offers nothing newer)"
            )
        return version
    if not _exists(conn, _SEND_WITH_HEADERS):
        raise BootstrapError(
            "pgmq (SQL-only install) is older than 1.5.1: it has no "
            "pgmq.send(text, jsonb, jsonb, integer); this project needs pgmq 1.5.1 or newer: "
            "reinstall pgmq's SQL from a newer release"
        )
    return "SQL-only, 1.5.1 or newer"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _require_create_on_database(conn: psycopg.Connection, why: str) -> None:
    if not _exists(conn, "select has_database_privilege(current_database(), 'CREATE')"):
        database = conn.execute("select current_database()").fetchone()
        raise BootstrapError(
            f"role {_current_user(conn)} has no CREATE privilege on database "
            f"{database[0] if database else '?'} ({why}): grant it, or use the database "
            f"owner's or postgres's URL"
        )


def _current_user(conn: psycopg.Connection) -> str:
    row = conn.execute("select current_user").fetchone()
    return str(row[0]) if row else "?"


def _apply_migrations(conn: psycopg.Connection) -> list[str]:
    if not _exists(conn, _RELATION_EXISTS, ["supabase_migrations", "schema_migrations"]):
        _require_create_on_database(conn, "the migrations create schemas")
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


def _exists(conn: psycopg.Connection, query: str, params: list[str] | None = None) -> bool:
    row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
