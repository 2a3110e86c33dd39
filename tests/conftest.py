"""Fixtures: one PostgreSQL server for the session (started here through pytest-postgresql),
the migrations applied once into a template database, and a fresh clone of it per test.

The server reproduces Supabase's privilege model: its superuser is `supabase_admin` (initdb's
user) and `postgres` is a plain role. A superuser prepares "the Supabase platform" in the
template (the compatibility layer, pgmq in the version under test, pgTAP in `extensions`, as
`supabase test db` has it), then `wa-poller db bootstrap` applies the migrations AS `postgres`,
so their objects are owned by `postgres` as on Supabase. The database is owned by `postgres`,
as a Supabase project's is. `conn` and `db_url` stay superuser's (seeding and assertions);
`postgres_url` / `postgres_conn` act as `postgres`. WA_TEST_PGMQ picks pgmq: 1.5.1 (default,
what hosted Supabase ships) or 1.13 (see tests/pgmq_versions.py).
"""

import itertools
import os
import pwd
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql.executors.proc import PostgreSQLExecutor

from poller.bootstrap import bootstrap
from poller.localpg import free_port, server_options
from poller.resources import SQL_DIR, load_sql
from tests import pgmq_versions
from tests.personas import Seed, seed

PG_CTL = str(Path(__file__).with_name("pg_ctl_unprivileged"))
TEMPLATE = "wa_template"
POLLER_PASSWORD = "wa_poller_test"
# The test server's superuser, as on Supabase; `postgres` is not one.
SUPERUSER = "supabase_admin"
PGMQ_VERSION = pgmq_versions.selected_version()
_clone_numbers = itertools.count()


def start_server() -> PostgreSQLExecutor:
    """A new PostgreSQL server of the suite's own, in a fresh folder, on a free port."""
    folder = Path(tempfile.mkdtemp(prefix="wa-test-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    executor = PostgreSQLExecutor(
        executable=PG_CTL,
        host="127.0.0.1",
        port=free_port(),
        datadir=str(folder / "data"),
        unixsocketdir=str(folder),
        logfile=str(folder / "server.log"),
        startparams="-w",
        dbname="postgres",
        user=SUPERUSER,
        # fsync off: a test server's data need not survive a power cut.
        postgres_options=server_options(max_connections=300) + " -c fsync=off",
    )
    start_and_wait(executor)
    with psycopg.connect(server_url(executor), autocommit=True) as conn:
        # A plain login role; the compatibility layer gives it Supabase's attributes and grants.
        conn.execute("create role postgres login")
    return executor


def start_and_wait(executor: PostgreSQLExecutor, timeout: float = 60) -> None:
    """Start the server and wait until it takes connections: the executor returns as soon as the
    port is open, which can be while the server still says "the database system is starting up"."""
    executor.start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(server_url(executor), connect_timeout=5).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgreSQLExecutor]:
    executor = start_server()
    yield executor
    executor.stop()


def server_url(server: PostgreSQLExecutor, dbname: str = "postgres") -> str:
    """The superuser's URL (`supabase_admin`)."""
    return f"postgresql://{SUPERUSER}@{server.host}:{server.port}/{dbname}"


def _as_role(url: str, userinfo: str) -> str:
    return re.sub(r"^(postgres(?:ql)?://)[^@/]*@", rf"\g<1>{userinfo}@", url, count=1)


def poller_url(superuser_url: str) -> str:
    """The same database, as the poller's least-privilege role."""
    return _as_role(superuser_url, f"wa_poller:{POLLER_PASSWORD}")


def postgres_url(superuser_url: str) -> str:
    """The same database, as `postgres`: the role migrations and `supabase test db` run as."""
    return _as_role(superuser_url, "postgres")


def prepare_platform(url: str, pgmq_version: str = PGMQ_VERSION) -> None:
    """What Supabase gives a project before its migrations, done by the superuser: the
    compatibility layer (roles, grants, auth, realtime), pgmq in `pgmq_version`, handed to
    `postgres` as Supabase's after-create script does, and pgTAP in `extensions` (postgres may
    not create an untrusted extension)."""
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(load_sql("supabase_compat").encode())
            # The realtime shapes come in their own file, when it exists.
            if (SQL_DIR / "supabase_compat_realtime.sql").exists():
                conn.execute(load_sql("supabase_compat_realtime").encode())
        pgmq_versions.install(conn, pgmq_version)
        conn.execute("create extension if not exists pgtap with schema extensions")


def supabase_database(server: PostgreSQLExecutor, name: str) -> str:
    """A new database as a Supabase project has it (owned by `postgres`, the platform
    prepared, no migrations yet); returns its superuser URL."""
    with psycopg.connect(server_url(server), autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name} owner postgres")
    url = server_url(server, name)
    prepare_platform(url)
    return url


@pytest.fixture(scope="session")
def template_url(pg_server: PostgreSQLExecutor) -> str:
    url = supabase_database(pg_server, TEMPLATE)
    bootstrap(postgres_url(url), poller_password=POLLER_PASSWORD)
    return url


@contextmanager
def cloned_database(server: PostgreSQLExecutor) -> Iterator[str]:
    """A new database cloned from the migrated template; dropped afterwards."""
    name = f"wa_test_{os.getpid()}_{next(_clone_numbers)}"
    with psycopg.connect(server_url(server), autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE} owner postgres")
    yield server_url(server, name)
    with psycopg.connect(server_url(server), autocommit=True) as conn:
        conn.execute(f"drop database {name} with (force)")


@pytest.fixture
def db_url(pg_server: PostgreSQLExecutor, template_url: str) -> Iterator[str]:
    """A database of its own for each test."""
    with cloned_database(pg_server) as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A superuser connection to the test's database (autocommit)."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def postgres_conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A connection to the test's database as `postgres` (autocommit), as Supabase's SQL
    editor, `supabase db push` and `supabase test db` connect."""
    with psycopg.connect(postgres_url(db_url), autocommit=True) as connection:
        yield connection


@pytest.fixture
def data(conn: psycopg.Connection) -> Seed:
    return seed(conn)


@pytest.fixture(scope="module")
def shared_conn(pg_server: PostgreSQLExecutor, template_url: str) -> Iterator[psycopg.Connection]:
    """One seeded database for a module whose tests each roll back all they do."""
    with cloned_database(pg_server) as url, psycopg.connect(url, autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def shared_data(shared_conn: psycopg.Connection) -> Seed:
    return seed(shared_conn)


@pytest.fixture
def own_server() -> Iterator[tuple[PostgreSQLExecutor, str]]:
    """A PostgreSQL of the test's own, prepared and migrated as the template is, for a test
    that stops or restarts it; yields the server and the database's superuser URL."""
    server = start_server()
    url = supabase_database(server, "wa_own")
    bootstrap(postgres_url(url), poller_password=POLLER_PASSWORD)
    yield server, url
    if server.running():
        server.stop()
