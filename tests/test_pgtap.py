"""The pgTAP files in supabase/tests/database (what `supabase test db` runs), run with pg_prove
against a fresh clone of the migrated database."""

import shutil
import subprocess
from pathlib import Path

from poller.resources import PROJECT_ROOT

PGTAP_DIR = PROJECT_ROOT / "supabase" / "tests" / "database"


def test_pgtap_files_pass(db_url):
    files = sorted(str(p) for p in Path(PGTAP_DIR).glob("*.test.sql"))
    assert len(files) >= 6
    pg_prove = shutil.which("pg_prove")
    assert pg_prove, (
        "pg_prove missing: the test command installs libtap-parser-sourcehandler-pgtap-perl"
    )
    done = subprocess.run(
        [pg_prove, "--verbose", "--failures", "-d", db_url, *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Result: PASS" in done.stdout
