"""The real Supabase CLI (pinned in tools/package-lock.json, installed by scripts/setup) against the
suite's server: `db push` as the non-superuser `postgres` into a database prepared like a Supabase
project, then `migration list`, `db lint` and `db advisors` on the result.

`supabase start` and `supabase test db` need Docker and are not run here."""

import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from poller.localpg import pg_bindir
from poller.resources import PROJECT_ROOT, migrations
from tests.conftest import postgres_url, server_url, supabase_database

CLI = PROJECT_ROOT / "tools" / "node_modules" / ".bin" / "supabase"
SEED = PROJECT_ROOT / "supabase" / "seed.sql"
PROJECT_SCHEMAS = ("public", "private")
CLI_TIMEOUT = 300
_databases = iter(range(1_000_000))


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment the CLI runs in: a HOME of its own (the CLI writes telemetry and traces
    there), nothing of the user's Supabase or libpq settings, no telemetry or update check."""
    if not os.access(CLI, os.X_OK):
        pytest.fail(
            f"Supabase CLI not installed at {CLI.relative_to(PROJECT_ROOT)}: run scripts/setup"
        )
    home = tmp_path_factory.mktemp("supabase-home")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SUPABASE_", "PG", "XDG_")) and key != "HOME"
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        DO_NOT_TRACK="1",
        SUPABASE_TELEMETRY_DISABLED="1",
        SUPABASE_NO_UPDATE_NOTIFIER="1",
        NO_COLOR="1",
    )
    return env


def supabase(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run the CLI from the project root, so it reads supabase/config.toml and migrations/."""
    done = subprocess.run(
        [str(CLI), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"supabase {' '.join(args)} exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return done


def run(args: list[str], timeout: float) -> str:
    """Run a tool; on failure, fail with what it said."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{Path(args[0]).name} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


def cli_url(url: str) -> str:
    # The suite's server has no TLS; the CLI would otherwise insist on it.
    return f"{url}?sslmode=disable"


@pytest.fixture(scope="module")
def new_database(pg_server) -> Iterator:
    """Makes databases as a Supabase project has them before its first migration (conftest's
    platform: compatibility layer, pgmq under test); superuser URLs; dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"wa_cli_{os.getpid()}_{next(_databases)}"
        made.append(name)
        return supabase_database(pg_server, name)

    yield make
    with psycopg.connect(server_url(pg_server), autocommit=True) as conn:
        for name in made:
            conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture(scope="module")
def pushed(new_database, cli_env: dict[str, str]) -> str:
    """A prepared database with the migrations pushed by the CLI as `postgres`; superuser URL."""
    url = new_database()
    if urlsplit(url).username != "postgres":
        # The server's superuser is someone else, so `postgres` must be Supabase's non-superuser.
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("select rolsuper from pg_roles where rolname = 'postgres'")
            assert row.fetchone() == (False,), "postgres is a superuser: not Supabase's model"
    supabase(cli_env, "db", "push", "--db-url", cli_url(postgres_url(url)), "--yes")
    return url


def test_push_records_every_migration(pushed: str, cli_env: dict[str, str]) -> None:
    expected = [(m.version, m.name) for m in migrations()]
    with psycopg.connect(pushed, connect_timeout=10) as conn:
        recorded = conn.execute(
            "select version, name from supabase_migrations.schema_migrations order by version"
        ).fetchall()
    assert recorded == expected

    listed = supabase(
        cli_env, "migration", "list", "--db-url", cli_url(pushed), "--output-format", "json"
    )
    rows = json.loads(listed.stdout)["migrations"]
    assert [(row["local"], row["remote"]) for row in rows] == [(v, v) for v, _ in expected]


def schema_dump(url: str) -> list[str]:
    pg_dump = str(pg_bindir() / "pg_dump")
    args = [pg_dump, "--schema-only", "--dbname", url]
    help_text = run([pg_dump, "--help"], timeout=30)
    # pg_dump 15.14+ wraps its output in \restrict with a random key; a fixed key keeps two dumps
    # comparable without editing them.
    if "--restrict-key" in help_text:
        args.append("--restrict-key=waoutbox")
    return run(args, timeout=120).splitlines()


def test_push_gives_the_schema_bootstrap_gives(pushed: str, new_database) -> None:
    bootstrapped = new_database()
    wa_poller = shutil.which("wa-poller", path=str(Path(sys.executable).parent)) or "wa-poller"
    run([wa_poller, "db", "bootstrap", "--database-url", postgres_url(bootstrapped)], 300)
    diff = list(
        difflib.unified_diff(
            schema_dump(bootstrapped), schema_dump(pushed), "bootstrap", "db push", lineterm=""
        )
    )
    assert not diff, "\n".join(diff[:200])


def test_lint_finds_nothing_in_the_project_schemas(pushed: str, cli_env: dict[str, str]) -> None:
    # The CLI lints as `postgres` (it switches to it even from supabase_admin) and creates
    # plpgsql_check for the run. `postgres` may not create that untrusted extension here; on
    # hosted Supabase supautils creates it on postgres's behalf. So the superuser does, where
    # the CLI's own `create extension` would put it and its unqualified calls find it (public,
    # first on postgres's path), and drops it after, so the other checks see the pushed schema.
    with psycopg.connect(pushed, autocommit=True, connect_timeout=10) as conn:
        conn.execute("create extension plpgsql_check with schema public")
    try:
        done = supabase(
            cli_env,
            "db", "lint", "--db-url", cli_url(pushed), "--level", "warning",
            "--schema", ",".join(PROJECT_SCHEMAS), "--output-format", "json",
        )  # fmt: skip
    finally:
        with psycopg.connect(pushed, autocommit=True, connect_timeout=10) as conn:
            conn.execute("drop extension plpgsql_check")
    results = json.loads(done.stdout)["results"]
    findings = [
        f"{result['function']}: {issue['level']}: {issue['message']}"
        for result in results
        for issue in result["issues"]
    ]
    assert not findings, "\n".join(findings)


def test_push_include_seed_applies_the_seed(new_database, cli_env: dict[str, str]) -> None:
    url = new_database()
    supabase(
        cli_env, "db", "push", "--db-url", cli_url(postgres_url(url)), "--include-seed",
        "--yes",
    )  # fmt: skip
    with psycopg.connect(url, connect_timeout=10) as conn:
        seeded = conn.execute("select path, hash from supabase_migrations.seed_files").fetchall()
        teams = conn.execute("select name from public.employee_groups").fetchall()
        groups = conn.execute("select count(*) from public.whatsapp_groups").fetchone()
    assert seeded == [("supabase/seed.sql", hashlib.sha256(SEED.read_bytes()).hexdigest())]
    # The seed's demo team and groups (seed.sql).
    assert ("Claims",) in teams
    assert groups is not None and groups[0] > 0


def test_config_has_no_deprecated_section(cli_env: dict[str, str]) -> None:
    # `status` loads and checks config.toml first, then fails for want of Docker: only its
    # config warnings matter here.
    done = supabase(cli_env, "status", check=False, timeout=120)
    warnings = [
        line for line in (done.stdout + done.stderr).splitlines() if "deprecated" in line.lower()
    ]
    assert not warnings, "\n".join(warnings)


def test_cli_leaves_nothing_for_git(pushed: str) -> None:
    """Every CLI run writes supabase/.temp; it must stay out of `git status`."""
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    status = run(
        ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=all", "--",
         "supabase/.temp", "tools"],
        timeout=60,
    )  # fmt: skip
    leftovers = [
        line for line in status.splitlines()
        if "supabase/.temp" in line or "node_modules" in line
    ]  # fmt: skip
    assert not leftovers, "\n".join(leftovers)


def test_advisors_report_no_error_or_warning(pushed: str, cli_env: dict[str, str]) -> None:
    # Given the superuser's URL: a role that owns nothing sees too little (a plain role got
    # "No issues found" where the superuser got six warnings).
    done = supabase(
        cli_env,
        "db", "advisors", "--db-url", cli_url(pushed), "--type", "all", "--level", "warn",
        "--fail-on", "none", "--output-format", "json",
    )  # fmt: skip
    results = json.loads(done.stdout)["results"]
    offenders = [
        f"{item['level']} {item['name']} ({', '.join(item['categories'])}): {item['detail']}"
        for item in results
        if item["level"] in ("ERROR", "WARN")
    ]
    assert not offenders, f"{len(offenders)} advisor findings:\n" + "\n".join(offenders)


def test_push_refuses_a_pgmq_without_headers_and_changes_nothing(
    new_database, cli_env: dict[str, str]
) -> None:
    """pgmq older than 1.5.1 (1.4.4 on older hosted projects): the first migration stops before
    it changes anything, saying what is needed."""
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        # pgmq 1.4's surface: no headers variants of send.
        for signature in (
            "send(text, jsonb, jsonb)",
            "send(text, jsonb, jsonb, integer)",
            "send(text, jsonb, jsonb, timestamp with time zone)",
        ):
            conn.execute(f"drop function if exists pgmq.{signature}")
    done = supabase(
        cli_env, "db", "push", "--db-url", cli_url(postgres_url(url)), "--yes", check=False
    )
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "too old: this project needs pgmq 1.5.1 or newer" in said, said
    with psycopg.connect(url) as conn:
        assert conn.execute("select to_regnamespace('private')").fetchone() == (None,)
        applied = conn.execute(
            "select count(*) from supabase_migrations.schema_migrations"
        ).fetchone()[0]
        assert applied == 0
