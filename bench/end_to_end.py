"""End to end with the simulated WhatsApp (no latency, no rate limit, no receipts): producers
call send_message through SQL as an authenticated employee, one call per transaction as
PostgREST makes it, while a `wa-poller run` process sends. Prints JSON.

Two modes, each run --runs times (medians reported):
- paced: one producer at --rate messages per second for --seconds;
- burst: --burst messages from --producers producers as fast as they go.
Figures: enqueued per second, end-to-end per second (first enqueue to last `sent`), the latency
from enqueue (the send_message transaction) to `sent` (WhatsApp accepted it), p50/p99, and the
window from WhatsApp's acknowledgement to the `sent` write (a crash inside it repeats a send).

Uses $WA_DATABASE_URL's server if set, otherwise an embedded PostgreSQL in .local/bench-pg.
"""

import argparse
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


def produce(url: str, total: int, producers: int, rate: int | None, workdir: Path) -> None:
    """pgbench as the producers: `total` calls over `producers` connections, paced at `rate`
    calls per second overall when given."""
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
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{done.stdout}\n{done.stderr}")


def run_once(
    url: str, total: int, producers: int, rate: int | None, workdir: Path
) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate messages cascade")
        conn.execute("delete from pgmq.a_whatsapp_outbound")
    per = total // producers
    produce(url, total, producers, rate, workdir)
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 300
        while (
            conn.execute("select count(*) from messages where status = 'sent'").fetchone()[0]
            < per * producers
        ):
            if time.monotonic() > deadline:
                raise SystemExit("messages were not all sent within 300 s")
            time.sleep(0.05)
        row = conn.execute(
            """
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
                  from messages) m
            """
        ).fetchone()
    n, enqueue_span, e2e_span, p50, p99, w50, w99 = row
    # created_at is each send_message transaction's start: the enqueue span ends at the last
    # one's start, so the enqueue rate is taken over n - 1 gaps.
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


def median_of(runs: list[dict[str, float]]) -> dict[str, object]:
    keys = [k for k in runs[0] if k != "messages"]
    return {
        "messages": runs[0]["messages"],
        **{k: round(statistics.median(r[k] for r in runs), 2) for k in keys},
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=200, help="paced: messages per second")
    parser.add_argument("--seconds", type=int, default=10, help="paced: duration")
    parser.add_argument("--burst", type=int, default=20_000, help="burst: messages")
    parser.add_argument("--producers", type=int, default=4, help="burst: producer connections")
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
