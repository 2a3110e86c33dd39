"""Fixtures: one PostgreSQL server for the session (started here through pytest-postgresql),
the migrations applied once into a template database, and a fresh clone of it per test."""

import itertools
import os
import pwd
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
from tests.personas import Seed, seed

PG_CTL = str(Path(__file__).with_name("pg_ctl_unprivileged"))
TEMPLATE = "wa_template"
POLLER_PASSWORD = "wa_poller_test"
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
        user="postgres",
        # fsync off: a test server's data need not survive a power cut.
        postgres_options=server_options(max_connections=300) + " -c fsync=off",
    )
    start_and_wait(executor)
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
    return f"postgresql://postgres@{server.host}:{server.port}/{dbname}"


def poller_url(superuser_url: str) -> str:
    """The same database, as the poller's least-privilege role."""
    return superuser_url.replace("postgres@", f"wa_poller:{POLLER_PASSWORD}@", 1)


@pytest.fixture(scope="session")
def template_url(pg_server: PostgreSQLExecutor) -> str:
    with psycopg.connect(server_url(pg_server), autocommit=True) as conn:
        conn.execute(f"create database {TEMPLATE}")
    url = server_url(pg_server, TEMPLATE)
    bootstrap(url, poller_password=POLLER_PASSWORD)
    return url


@contextmanager
def cloned_database(server: PostgreSQLExecutor) -> Iterator[str]:
    """A new database cloned from the migrated template; dropped afterwards."""
    name = f"wa_test_{os.getpid()}_{next(_clone_numbers)}"
    with psycopg.connect(server_url(server), autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE}")
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
