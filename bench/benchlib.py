"""What the benchmarks share: a fresh, bootstrapped database on $WA_DATABASE_URL's server, or on
an embedded PostgreSQL in .local/bench-pg that is stopped afterwards."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poller.bootstrap import bootstrap
from poller.localpg import LocalPostgres, default_folder

POLLER_PASSWORD = "wa-bench"


@dataclass(frozen=True)
class BenchDatabase:
    url: str  # as the superuser
    poller_url: str  # as wa_poller


@contextmanager
def bench_database(name: str) -> Iterator[BenchDatabase]:
    given = os.environ.get("WA_DATABASE_URL")
    server = None
    if given:
        admin = make_conninfo(**{**conninfo_to_dict(given), "dbname": "postgres"})
    else:
        server = LocalPostgres(default_folder("bench-pg"))
        server.start()
        admin = server.url
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
            conn.execute(f'create database "{name}"')
        params = {**conninfo_to_dict(admin), "dbname": name}
        database = BenchDatabase(
            url=make_conninfo(**params),
            poller_url=make_conninfo(
                **{**params, "user": "wa_poller", "password": POLLER_PASSWORD}
            ),
        )
        bootstrap(database.url, poller_password=POLLER_PASSWORD)
        yield database
    finally:
        if server is not None:
            server.stop()
