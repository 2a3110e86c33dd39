"""`wa-poller db bootstrap`: from a bare database to a ready one, safely twice and concurrently,
with one-line errors for a bad URL or a server that is down."""

import subprocess
import sys
import threading
from collections.abc import Iterator

import psycopg
import pytest

from poller.bootstrap import bootstrap
from poller.localpg import free_port
from poller.resources import load_sql, migrations
from tests.conftest import server_url

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


def test_an_existing_supabase_auth_schema_is_left_alone(bare_url):
    with psycopg.connect(bare_url, autocommit=True) as conn:
        conn.execute(load_sql("supabase_compat").encode())
    report = bootstrap(bare_url)
    assert not report.compat_applied
    assert report.migrations_applied == ALL_MIGRATIONS


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
