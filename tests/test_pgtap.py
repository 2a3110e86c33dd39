"""The pgTAP files in supabase/tests/database (what `supabase test db` runs), run with pg_prove
as `postgres` (not a superuser, as on Supabase) against a fresh clone of the migrated database:
as migrated, and with supabase/seed.sql applied first (what `supabase start` and `db reset` do)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from poller.resources import PROJECT_ROOT
from tests.conftest import postgres_url

PGTAP_DIR = PROJECT_ROOT / "supabase" / "tests" / "database"
SEED = PROJECT_ROOT / "supabase" / "seed.sql"


def psql(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("seeded", [False, True], ids=["migrated", "seeded"])
def test_pgtap_files_pass(db_url, seeded):
    files = sorted(str(p) for p in Path(PGTAP_DIR).glob("*.test.sql"))
    assert len(files) >= 6
    pg_prove = shutil.which("pg_prove")
    assert pg_prove, (
        "pg_prove missing: the test command installs libtap-parser-sourcehandler-pgtap-perl"
    )
    url = postgres_url(db_url)
    assert psql(
        url, "-Atc", "select rolsuper from pg_roles where rolname = current_user"
    ).stdout == ("f\n")
    if seeded:
        applied = psql(url, "-f", str(SEED))
        assert applied.returncode == 0, applied.stderr
        # And the seed can be applied again (`db reset` on a database that has it).
        again = psql(url, "-f", str(SEED))
        assert again.returncode == 0, again.stderr
    done = subprocess.run(
        [pg_prove, "--verbose", "--failures", "-d", url, *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Result: PASS" in done.stdout
