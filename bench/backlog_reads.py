"""What one read of a batch costs as the backlog grows: private.take_outbound (the poller's read
and claim) against pgmq.read on the same backlog, for each backlog shape (GROUPSxPER_GROUP).

Every queued message has its public.messages row, in a group of a session that the bench's
poller holds (a live lease) and has connected, with room for a whole batch: the read claims what
it reads, as it does in production. Each timed read runs in a transaction that is rolled back,
so every run sees the same backlog. Three figures per backlog, each the median of --runs:

- take_ms: take_outbound on a connection opened after VACUUM ANALYZE (plans made on the backlog);
- take_stale_plan_ms: take_outbound on a connection whose plans were cached while the queue held
  only a first batch, the rest queued since and not analyzed yet (tests/test_dispatch.py's
  stale-plan case); autovacuum is off on the tables read, so no ANALYZE comes in between;
- pgmq_read_ms: pgmq.read of the same batch size, after VACUUM ANALYZE.

Prints JSON. Uses $WA_DATABASE_URL's server if set, otherwise an embedded PostgreSQL in
.local/bench-pg. --explain prints take_outbound's plans on the largest backlog to stderr
(auto_explain, EXPLAIN ANALYZE of each statement inside the function).
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import psycopg
from benchlib import bench_database

POLLER_ID = "bench-poller"
DEFAULT_SHAPES = "1000x2,1000x20,1000x200,1000x1000,1x1000000,10000x100"
# The tables take_outbound reads: ANALYZE only when the bench says so (see the stale-plan case).
TABLES = ("pgmq.q_whatsapp_outbound", "public.messages", "public.whatsapp_groups")
TAKE = (
    "select * from private.take_outbound("
    "%(me)s, %(sessions)s::uuid[], %(rooms)s::integer[], '{}'::bigint[], %(vt)s, %(qty)s, %(ttl)s)"
)
READ = "select msg_id from pgmq.read('whatsapp_outbound', %(vt)s, %(qty)s)"


@dataclass(frozen=True)
class Shape:
    groups: int
    per_group: int

    @property
    def queued(self) -> int:
        return self.groups * self.per_group

    @property
    def name(self) -> str:
        return f"{self.groups}x{self.per_group}"


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for part in text.split(","):
        groups, per_group = part.lower().split("x")
        shapes.append(Shape(int(groups), int(per_group)))
    return shapes


def jid_sql(groups: int) -> str:
    return f"'1203630000' || lpad((i %% {groups})::text, 8, '0') || '@g.us'"


def setup_sessions(conn: psycopg.Connection, sessions: int) -> list:
    # Connected and held by the bench's poller for the whole run, as a poller's own sessions are.
    rows = conn.execute(
        "insert into public.whatsapp_sessions (phone_number, status, lease_owner, "
        "lease_expires_at) select '90555' || lpad(n::text, 7, '0'), 'connected', %s, "
        "now() + interval '1 day' from generate_series(1, %s::integer) n returning id",
        [POLLER_ID, sessions],
    )
    ids = [r[0] for r in rows]
    for table in TABLES:
        conn.execute(f"alter table {table} set (autovacuum_enabled = false)")
    conn.execute("vacuum analyze public.whatsapp_sessions")
    return ids


def reset(conn: psycopg.Connection, shape: Shape, sessions: list) -> None:
    conn.execute(
        "truncate pgmq.q_whatsapp_outbound, public.messages, public.whatsapp_groups cascade"
    )
    # Groups dealt round robin over the sessions.
    conn.execute(
        f"insert into public.whatsapp_groups (jid, name, session_id) "
        f"select {jid_sql(shape.groups)}, 'Bench ' || i, (%s::uuid[])[1 + i %% %s] "
        f"from generate_series(0, %s::integer) i",
        [sessions, len(sessions), shape.groups - 1],
    )


def enqueue(conn: psycopg.Connection, shape: Shape, first: int, last: int) -> None:
    """Messages first..last (1-based, round robin over the groups, as a campaign queues them):
    their messages rows and queue rows in one statement; msg_id follows i."""
    if last < first:
        return
    conn.execute(
        f"with src as materialized ("
        f"  select i, gen_random_uuid() as id, {jid_sql(shape.groups)} as jid "
        f"  from generate_series(%s::integer, %s::integer) i"
        f"), m as ("
        f"  insert into public.messages (id, group_jid, content) "
        f"  select id, jid, 'Poliçe yenileme hatırlatması #' || i from src"
        f") "
        f"insert into pgmq.q_whatsapp_outbound (vt, message, headers) "
        f"select clock_timestamp(), jsonb_build_object('message_id', id), "
        f"jsonb_build_object('x-pgmq-group', jid) from src order by i",
        [first, last],
    )


def analyze(conn: psycopg.Connection) -> None:
    for table in TABLES:
        conn.execute(f"vacuum analyze {table}")


def timed(conn: psycopg.Connection, sql: str, params: dict, runs: int) -> tuple[float, int, int]:
    """Median ms of `runs` reads, each in a transaction rolled back: the backlog stays as it is.
    Also the last read's rows, and how many of them it claimed."""
    times = []
    rows: list = []
    claimed = 0
    for _ in range(runs):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
            times.append((time.perf_counter() - started) * 1000)
            names = [c.name for c in cursor.description or []]
            # A take that returns only the jobs it claimed has no `claimed` column.
            column = names.index("claimed") if "claimed" in names else None
            claimed = len(rows) if column is None else sum(1 for r in rows if r[column])
    return statistics.median(times), len(rows), claimed


def explain(url: str, params: dict) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: print(d.message_primary, file=sys.stderr))
        for setting in (
            "load 'auto_explain'",
            "set auto_explain.log_min_duration = 0",
            "set auto_explain.log_analyze = on",
            "set auto_explain.log_buffers = on",
            "set auto_explain.log_nested_statements = on",
            "set client_min_messages = log",
        ):
            conn.execute(setting)
        with conn.transaction(force_rollback=True):
            conn.execute(TAKE, params).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="GROUPSxPER_GROUP,...")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=6, help="untimed reads first (plans cached)")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    shapes = parse_shapes(args.shapes)
    largest = max(s.queued for s in shapes)

    results = []
    started = time.perf_counter()
    with (
        bench_database("wa_backlog_reads") as database,
        psycopg.connect(database.url, autocommit=True) as admin,
    ):
        sessions = setup_sessions(admin, args.sessions)
        params = {
            "me": POLLER_ID,
            "sessions": sessions,
            # WA_SESSION_INFLIGHT at least the batch: the per-session cap is computed, and every
            # shape (one group too) can fill a whole batch.
            "rooms": [args.batch] * len(sessions),
            "vt": 30,
            "qty": args.batch,
            "ttl": 86_400.0,
        }
        for shape in shapes:
            fill_started = time.perf_counter()
            reset(admin, shape, sessions)
            # The stale-plan case: plans cached on a first batch, analyzed as such.
            seed = min(args.batch, shape.queued)
            enqueue(admin, shape, 1, seed)
            analyze(admin)
            # As the poller connects: wa_poller (take_outbound is SECURITY DEFINER).
            with psycopg.connect(database.poller_url, autocommit=True) as stale:
                timed(stale, TAKE, params, max(args.warmup, 10))
                enqueue(admin, shape, seed + 1, shape.queued)
                fill_s = time.perf_counter() - fill_started
                stale_ms, _, _ = timed(stale, TAKE, params, args.runs)
            analyze(admin)
            with psycopg.connect(database.poller_url, autocommit=True) as poller:
                timed(poller, TAKE, params, args.warmup)
                take_ms, take_rows, take_claimed = timed(poller, TAKE, params, args.runs)
            timed(admin, READ, params, 1)
            read_ms, read_rows, _ = timed(admin, READ, params, args.runs)
            results.append(
                {
                    "shape": shape.name,
                    "groups": shape.groups,
                    "queued": shape.queued,
                    "take_ms": round(take_ms, 2),
                    "take_stale_plan_ms": round(stale_ms, 2),
                    "pgmq_read_ms": round(read_ms, 2),
                    "take_over_read": round(take_ms / read_ms, 2),
                    "take_rows": take_rows,
                    "take_claimed": take_claimed,
                    "read_rows": read_rows,
                    "fill_s": round(fill_s, 1),
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr)  # progress on long runs
            if args.explain and shape.queued == largest:
                explain(database.url, params)

    smallest = min(results, key=lambda r: r["queued"])
    biggest = [r for r in results if r["queued"] == largest]
    print(
        json.dumps(
            {
                "benchmark": "one read of a batch against the backlog it reads",
                "batch": args.batch,
                "runs": args.runs,
                "setup": {
                    "sessions": args.sessions,
                    "claimable": True,
                    "how": "every queued message has its messages row (pending), in a group of "
                    "a connected session held by the reading poller with room for a batch; "
                    "p_held empty; each timed read rolled back",
                    "take_called_as": "wa_poller",
                    "pgmq_read_called_as": "superuser",
                },
                "backlogs": results,
                "summary": {
                    "smallest": smallest["shape"],
                    "largest_take_over_smallest": {
                        r["shape"]: round(r["take_ms"] / smallest["take_ms"], 2) for r in biggest
                    },
                    "largest_stale_take_over_smallest": {
                        r["shape"]: round(r["take_stale_plan_ms"] / smallest["take_ms"], 2)
                        for r in biggest
                    },
                    "worst_take_over_read": max(r["take_over_read"] for r in results),
                    "targets": {"largest_take_over_smallest": 3, "take_over_read": 10},
                },
                "elapsed_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
