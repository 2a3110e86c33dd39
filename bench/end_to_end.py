"""End to end with the simulated WhatsApp (no latency, no rate limit, no receipts): producers
call send_message through SQL as an authenticated employee, one call per transaction as
PostgREST makes it, while a `wa-poller run` process sends. Prints JSON.

Two modes, each run --runs times (medians reported):
- paced: one producer at --rate messages per second for --seconds;
- burst: --burst messages from --producers producers as fast as they go.
Figures: enqueued per second, end-to-end per second (first enqueue to last `sent`), the latency
from enqueue (the send_message transaction) to `sent` (WhatsApp accepted it), p50/p99, and the
window from WhatsApp's acknowledgement to the `sent` write (a crash inside it repeats a send).

Paced mode also prints a breakdown of where a message's time goes (p50/p99/mean per part; the
means add up to the mean latency), from timestamps recorded without touching the poller:
- commit: send_message's transaction start (messages.created_at) to its commit as the producer
  saw it return (pgbench's per-transaction log, -l: the completion time, so it includes the
  commit reply's trip back to the producer);
- wake: that commit to the poller's claim of the job inside private.take_outbound (the
  clock_timestamp() the claim writes into the job's vt, read back from pgmq's archive row minus
  the visibility timeout): the wake-up and the take's read up to its claim;
- take_and_send: the claim to WhatsApp's acknowledgement (messages.sent_at, the simulated
  transport's accept time): the rest of the take's round trip, handing the job to its lane and the
  send. Where the take ends and the send begins is recorded nowhere (no timestamp or log line in
  the poller); splitting them needs the poller to record it (e.g. a DEBUG line with the time the
  take returned, or the simulated transport logging the time send was entered);
- status_write: the acknowledgement to the `sent` row committed (pg_xact_commit_timestamp of the
  row's last writer, when the server has track_commit_timestamp on), otherwise to the `sent`
  write's transaction start only (messages.updated_at), and the figure says so.

Uses $WA_DATABASE_URL's server if set, otherwise an embedded PostgreSQL in .local/bench-pg.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from benchlib import bench_database

from poller.localpg import pg_bindir

GROUPS = 20
VISIBILITY_TIMEOUT = 30  # seconds: the poller's lease, set explicitly (the breakdown uses it)
EMPLOYEE = uuid.UUID("00000000-0000-4000-8000-0000000e2e01")
CLAIMS = json.dumps({"sub": str(EMPLOYEE), "role": "authenticated"})


def prepare(url: str) -> None:
    """One team of GROUPS groups on one session, and the employee who sends."""
    with psycopg.connect(url, autocommit=True) as conn:
        # A benchmark sends as an automation would: without the per-person quotas.
        conn.execute("update send_limits set sender_per_minute = null, group_pending = null")
        conn.execute(
            "insert into auth.users (id, email) values (%s, 'bench@agency.test')", [EMPLOYEE]
        )
        team = conn.execute("insert into employee_groups (name) values ('Bench') returning id")
        team_id = team.fetchone()[0]
        conn.execute("insert into employee_group_members values (%s, %s)", [team_id, EMPLOYEE])
        session = conn.execute(
            "insert into whatsapp_sessions (phone_number) values ('905550000000') returning id"
        ).fetchone()[0]
        for n in range(GROUPS):
            jid = f"1203630000{n:08d}@g.us"
            conn.execute(
                "insert into whatsapp_groups (jid, name, session_id) values (%s, %s, %s)",
                [jid, f"G{n}", session],
            )
            conn.execute(
                "insert into group_assignments (group_jid, employee_group_id) values (%s, %s)",
                [jid, team_id],
            )
        conn.execute("vacuum analyze")


def start_poller(poller_url: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WA_DATABASE_URL": poller_url,
        "WA_RATE_PER_MINUTE": "0",
        "WA_SIM_LATENCY_MS": "0",
        "WA_SIM_RECEIPTS": "false",
        "WA_LOG_LEVEL": "WARNING",
        "WA_MAX_INFLIGHT": "5000",
        "WA_SESSION_INFLIGHT": "5000",
        "WA_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }
    log = open(workdir / "poller.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "poller.cli", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    with psycopg.connect(poller_url.replace("wa_poller", "postgres", 1)) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute("select status::text from whatsapp_sessions").fetchone()
            if row and row[0] == "connected":
                return proc
            time.sleep(0.05)
    raise SystemExit("the poller did not connect its session")


# One round trip per call (pgbench's `\\;` joins the statements), as PostgREST makes it: role and
# claims set inside the call's transaction.
PRODUCER_SCRIPT = "\n".join(
    [
        f"\\set g random(0, {GROUPS - 1})",
        "begin \\; set local role authenticated"
        f" \\; select set_config('request.jwt.claims', '{CLAIMS}', true)"
        " \\; select id from send_message('1203630000' || lpad(:g::text, 8, '0') || '@g.us',"
        " 'Poliçe yenileme hatırlatması #' || :g) \\; commit;",
        "",
    ]
)


def produce(
    url: str, total: int, producers: int, rate: int | None, workdir: Path, log: bool = False
) -> list[float]:
    """pgbench as the producers: `total` calls over `producers` connections, paced at `rate`
    calls per second overall when given. With `log`, returns each call's completion time (Unix
    seconds) in call order, from pgbench's per-transaction log."""
    script = workdir / "produce.sql"
    script.write_text(PRODUCER_SCRIPT)
    command = [
        str(pg_bindir() / "pgbench"),
        "-n",
        "-c",
        str(producers),
        "-j",
        "1",
        "-t",
        str(total // producers),
        "-f",
        str(script),
    ]
    if rate:
        command += ["-R", str(rate)]
    logs = workdir / "pgbench-log"
    if log:
        for old in workdir.glob("pgbench-log*"):
            old.unlink()
        command += ["-l", f"--log-prefix={logs}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    completed: list[tuple[int, int, float]] = []
    for path in workdir.glob("pgbench-log*"):
        with path.open() as lines:
            # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            for row in csv.reader(lines, delimiter=" "):
                completed.append((int(row[0]), int(row[1]), int(row[4]) + int(row[5]) / 1e6))
    return [t for _, _, t in sorted(completed)]


def reset(url: str) -> None:
    """Every run starts from the same state: no messages, and the queue's tables vacuumed (a
    burst leaves tens of thousands of dead queue rows that autovacuum does not always clear
    before the next run, and the reads slow down with them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate messages cascade")
        conn.execute("delete from pgmq.a_whatsapp_outbound")
        conn.execute("vacuum (analyze) pgmq.q_whatsapp_outbound, pgmq.a_whatsapp_outbound")


def wait_sent(url: str, table: str, expected: int) -> None:
    """Until `expected` rows of `table` are `sent` (at most 300 s)."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 300
        query = f"select count(*) from {table} where status = 'sent'"
        while conn.execute(query).fetchone()[0] < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"{table}: messages were not all sent within 300 s")
            time.sleep(0.05)


def figures(url: str, table: str) -> dict[str, float]:
    """The figures of one run from `table`'s rows: created_at is the enqueue (the producer's
    transaction start), sent_at WhatsApp's acknowledgement, updated_at the `sent` write's start.
    The seed's stack (compare_seed.py) writes the same three columns with the same meaning."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            f"""
            select count(*),
                   extract(epoch from max(created_at) - min(created_at))::float8,
                   extract(epoch from max(sent_at) - min(created_at))::float8,
                   percentile_cont(0.5) within group (order by latency),
                   percentile_cont(0.99) within group (order by latency),
                   percentile_cont(0.5) within group (order by window_s),
                   percentile_cont(0.99) within group (order by window_s)
            from (select *, extract(epoch from sent_at - created_at)::float8 as latency,
                         -- updated_at: when the `sent` write began (receipts are off)
                         extract(epoch from updated_at - sent_at)::float8 as window_s
                  from {table}) m
            """
        ).fetchone()
    n, enqueue_span, e2e_span, p50, p99, w50, w99 = row
    # created_at is each transaction's start: the enqueue span ends at the last one's start,
    # so the enqueue rate is taken over n - 1 gaps.
    return {
        "messages": n,
        "enqueued_per_s": round((n - 1) / enqueue_span, 1) if enqueue_span else 0.0,
        "end_to_end_per_s": round(n / e2e_span, 1),
        "latency_p50_ms": round(p50 * 1000, 2),
        "latency_p99_ms": round(p99 * 1000, 2),
        # The duplicate window: WhatsApp's acknowledgement to the start of the `sent` write.
        "ack_to_status_write_p50_ms": round(w50 * 1000, 2),
        "ack_to_status_write_p99_ms": round(w99 * 1000, 2),
    }


PARTS = ("commit", "wake", "take_and_send", "status_write")


def breakdown(url: str, commits: list[float]) -> dict[str, object]:
    """Where a paced message's time went (see the module's docstring): per part p50, p99 and
    mean in ms. `commits`: the producer's completion times, in call order (one producer)."""
    with psycopg.connect(url, autocommit=True) as conn:
        committed = conn.execute("select current_setting('track_commit_timestamp')::bool")
        exact = committed.fetchone()[0]
        write_end = "pg_xact_commit_timestamp(m.xmin)" if exact else "m.updated_at"
        rows = conn.execute(
            f"""
            select extract(epoch from m.created_at)::float8,
                   extract(epoch from a.vt - make_interval(secs => %s))::float8,
                   extract(epoch from m.sent_at)::float8,
                   extract(epoch from {write_end})::float8
            from messages m
            join pgmq.a_whatsapp_outbound a on (a.message ->> 'message_id')::uuid = m.id
            where m.status = 'sent' and a.read_ct = 1
            order by m.created_at
            """,
            [VISIBILITY_TIMEOUT],
        ).fetchall()
    if len(rows) != len(commits):
        raise SystemExit(
            f"breakdown: {len(rows)} messages sent on their first read, {len(commits)} calls"
        )
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    for (created, claimed, acked, written), commit in zip(rows, commits, strict=True):
        parts["commit"].append(commit - created)
        parts["wake"].append(claimed - commit)
        parts["take_and_send"].append(acked - claimed)
        parts["status_write"].append(written - acked)
    out: dict[str, object] = {
        "status_write_ends_at": "the sent row's commit"
        if exact
        else "the sent write's start (track_commit_timestamp is off)",
    }
    for name, values in parts.items():
        values.sort()
        out[name] = {
            "p50_ms": round(1000 * values[len(values) // 2], 3),
            "p99_ms": round(1000 * values[min(len(values) - 1, int(len(values) * 0.99))], 3),
            "mean_ms": round(1000 * statistics.fmean(values), 3),
        }
    return out


def run_once(
    url: str, total: int, producers: int, rate: int | None, workdir: Path
) -> dict[str, object]:
    reset(url)
    per = total // producers
    paced = producers == 1 and bool(rate)
    commits = produce(url, total, producers, rate, workdir, log=paced)
    wait_sent(url, "messages", per * producers)
    result: dict[str, object] = dict(figures(url, "messages"))
    if paced:
        result["breakdown"] = breakdown(url, commits)
    return result


def median_of(runs: list[dict[str, object]]) -> dict[str, object]:
    keys = [k for k, v in runs[0].items() if k != "messages" and isinstance(v, int | float)]
    out: dict[str, object] = {
        "messages": runs[0]["messages"],
        **{k: round(statistics.median(float(r[k]) for r in runs), 2) for k in keys},  # type: ignore[arg-type]
    }
    if "breakdown" in runs[0]:
        out["breakdown"] = median_breakdown([r["breakdown"] for r in runs])  # type: ignore[misc]
    out["runs"] = runs
    return out


def median_breakdown(runs: list[dict[str, object]]) -> dict[str, object]:
    """Each part's figures: the median over the runs."""
    out: dict[str, object] = {"status_write_ends_at": runs[0]["status_write_ends_at"]}
    for part in PARTS:
        out[part] = {
            k: round(statistics.median(r[part][k] for r in runs), 3)  # type: ignore[index]
            for k in ("p50_ms", "p99_ms", "mean_ms")
        }
    return out


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The paced and burst loads, the same for every script that runs them."""
    parser.add_argument("--rate", type=int, default=200, help="paced: messages per second")
    parser.add_argument("--seconds", type=int, default=10, help="paced: duration")
    parser.add_argument("--burst", type=int, default=20_000, help="burst: messages")
    parser.add_argument("--producers", type=int, default=4, help="burst: producer connections")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_load_arguments(parser)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with bench_database("wa_e2e") as database, tempfile.TemporaryDirectory() as tmp:
        url = database.url
        prepare(url)
        poller = start_poller(database.poller_url, Path(tmp))
        try:
            work = Path(tmp)
            paced = [
                run_once(url, args.rate * args.seconds, 1, args.rate, work)
                for _ in range(args.runs)
            ]
            burst = [
                run_once(url, args.burst, args.producers, None, work) for _ in range(args.runs)
            ]
        finally:
            poller.terminate()
            poller.wait(timeout=30)
    print(
        json.dumps(
            {
                "benchmark": "end to end: send_message → pgmq → poller → simulated WhatsApp → sent",
                "groups": GROUPS,
                "paced": {"rate_per_s": args.rate, "seconds": args.seconds, **median_of(paced)},
                "burst": {"producers": args.producers, **median_of(burst)},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
