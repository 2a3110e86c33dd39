"""Where the project's SQL lives, and loading it by name."""

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = PROJECT_ROOT / "sql"
MIGRATIONS_DIR = PROJECT_ROOT / "supabase" / "migrations"

_MIGRATION_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def load_sql(name: str) -> str:
    """Return the text of sql/<name>.sql."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


@cache
def query(name: str) -> str:
    """A named query the poller runs: sql/queries/<name>.sql, read once."""
    return load_sql(f"queries/{name}")


def migrations() -> list[Migration]:
    """The migrations in supabase/migrations, named as the Supabase CLI names them, in order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file not named <YYYYMMDDHHMMSS>_<name>.sql: {path.name}")
        found.append(Migration(match["version"], match["name"], path))
    return found
