"""Group sync at scale: --groups groups of --participants participants each, synced through the
poller's own path (the simulated transport lists them; poller.groups writes them), as the
wa_poller role. Prints JSON: seconds for the first sync (inserts) and for a re-sync (updates),
medians of --runs.

Uses $WA_DATABASE_URL's server if set, otherwise an embedded PostgreSQL in .local/bench-pg.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from benchlib import bench_database

from poller.db import Database
from poller.groups import sync_groups
from poller.settings import Settings
from poller.transports.base import ConnectionState, Receipt
from poller.transports.simulated import SimulatedTransport

OWN = "905550000001@s.whatsapp.net"


class QuietSink:
    def connection_changed(
        self, session_id: uuid.UUID, state: ConnectionState, reason: str | None
    ) -> None:
        pass

    def receipt(self, receipt: Receipt) -> None:
        pass

    def groups_changed(self, session_id: uuid.UUID) -> None:
        pass


def groups_file(path: Path, groups: int, participants: int) -> None:
    data = []
    for g in range(groups):
        members = [
            {
                "jid": f"90555{g:04d}{p:04d}@s.whatsapp.net",
                "lid": f"{g:05d}{p:06d}@lid",
                "phone_number": f"90555{g:04d}{p:04d}@s.whatsapp.net",
                "is_admin": p == 1,
                "is_super_admin": p == 0,
            }
            for p in range(participants - 1)
        ]
        members.append(
            {
                "jid": OWN,
                "lid": None,
                "phone_number": OWN,
                "is_admin": False,
                "is_super_admin": False,
            }
        )
        data.append(
            {
                "jid": f"1203632{g:011d}@g.us",
                "name": f"Müşteri grubu {g}",
                "participants": members,
                "announce_only": g % 10 == 0,
            }
        )
    path.write_text(json.dumps(data))


async def measure(url: str, poller_url: str, path: Path, runs: int) -> dict[str, object]:
    with psycopg.connect(url, autocommit=True) as conn:
        session = conn.execute(
            "insert into whatsapp_sessions (phone_number) values ('905550000001') returning id"
        ).fetchone()[0]
    settings = Settings(
        database_url=poller_url, sim_groups_file=path, sim_own_jid=OWN, sim_latency_ms=0
    )
    transport = SimulatedTransport(settings)
    client = transport.client(session, QuietSink())
    await client.start()
    while not client.connected:
        await asyncio.sleep(0.01)
    db = Database(poller_url)
    await db.open()
    first, again = [], []
    try:
        for _ in range(runs):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("delete from whatsapp_groups")
            started = time.perf_counter()
            await sync_groups(db, session, client)
            first.append(time.perf_counter() - started)
            started = time.perf_counter()
            await sync_groups(db, session, client)
            again.append(time.perf_counter() - started)
    finally:
        await client.stop()
        await db.close()
    return {
        "first_sync_s": round(statistics.median(first), 3),
        "resync_s": round(statistics.median(again), 3),
        "runs": {"first": [round(x, 3) for x in first], "resync": [round(x, 3) for x in again]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--participants", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with bench_database("wa_groups") as database, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "groups.json"
        groups_file(path, args.groups, args.participants)
        result = asyncio.run(measure(database.url, database.poller_url, path, args.runs))
    print(
        json.dumps(
            {
                "benchmark": "group sync through poller.groups, as wa_poller",
                "groups": args.groups,
                "participants_per_group": args.participants,
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
