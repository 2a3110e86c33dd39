"""Throughput of public.send_message (as authenticated employees, the way PostgREST calls it)
against raw pgmq.send, measured with pgbench in one run, alternating rounds; prints JSON.

Usage: .venv/bin/python bench/send_message_throughput.py [--seconds 10] [--rounds 3]
Uses $WA_DATABASE_URL's server if set (a database wa_bench is made on it), otherwise an
embedded PostgreSQL in .local/bench-pg.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import uuid

import psycopg
from benchlib import bench_database

from poller.localpg import pg_bindir

GROUPS = 20
# A team of employees; each call is made by one of them (ids ...be000 to ...be009).
EMPLOYEES = [uuid.UUID(f"00000000-0000-4000-8000-0000000be00{n}") for n in range(10)]
_GROUP_JID = "'1203630000000' || lpad(:g::text, 5, '0') || '@g.us'"
_CLAIMS = (
    """'{"sub": "00000000-0000-4000-8000-0000000be00' || :u || '", "role": "authenticated"}'"""
)

# One round trip per call in both scripts (pgbench's `\;` joins statements into one query):
# PostgREST sets the role and the claims and calls the function inside one transaction.
RPC_SCRIPT = "\n".join(
    [
        f"\\set g random(1, {GROUPS})",
        f"\\set u random(0, {len(EMPLOYEES) - 1})",
        "begin \\; set local role authenticated"
        f" \\; select set_config('request.jwt.claims', {_CLAIMS}, true)"
        f" \\; select id from send_message({_GROUP_JID}, 'Poliçe yenileme hatırlatması #' || :g)"
        " \\; commit;",
        "",
    ]
)
RAW_SCRIPT = "\n".join(
    [
        f"\\set g random(1, {GROUPS})",
        "select pgmq.send('whatsapp_outbound', jsonb_build_object('message_id', gen_random_uuid()),"
        f" jsonb_build_object('x-pgmq-group', {_GROUP_JID}));",
        "",
    ]
)


def prepare(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        # A benchmark sends as an automation would: without the per-person quotas.
        conn.execute("update send_limits set sender_per_minute = null, group_pending = null")
        team = conn.execute("insert into employee_groups (name) values ('Bench') returning id")
        team_id = team.fetchone()[0]
        for n, employee in enumerate(EMPLOYEES):
            conn.execute(
                "insert into auth.users (id, email) values (%s, %s)",
                [employee, f"bench{n}@agency.test"],
            )
            conn.execute("insert into employee_group_members values (%s, %s)", [team_id, employee])
        for n in range(1, GROUPS + 1):
            jid = f"1203630000000{n:05d}@g.us"
            conn.execute("insert into whatsapp_groups (jid, name) values (%s, %s)", [jid, f"G{n}"])
            conn.execute(
                "insert into group_assignments (group_jid, employee_group_id) values (%s, %s)",
                [jid, team_id],
            )
        conn.execute("vacuum analyze")


def pgbench(url: str, script: str, seconds: int, clients: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        command = [str(pg_bindir() / "pgbench"), "-n", "-c", str(clients), "-j"]
        command += [str(min(clients, 2)), "-T", str(seconds), "-f", f.name, url]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        os.unlink(f.name)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    if done.returncode != 0 or match is None or (failed and int(failed.group(1)) > 0):
        raise SystemExit(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of each pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    parser.add_argument("--clients", type=int, default=4, help="pgbench client connections")
    args = parser.parse_args()

    rpc_tps: list[float] = []
    raw_tps: list[float] = []
    with bench_database("wa_bench") as database:
        url = database.url
        prepare(url)
        for round_no in range(args.rounds):
            # Alternate which goes first, so table growth and noise fall on both alike.
            order = [(RPC_SCRIPT, rpc_tps), (RAW_SCRIPT, raw_tps)]
            for script, results in order if round_no % 2 == 0 else reversed(order):
                results.append(pgbench(url, script, args.seconds, args.clients))
    rpc_median, raw_median = statistics.median(rpc_tps), statistics.median(raw_tps)
    report = {
        "benchmark": "send_message vs raw pgmq.send",
        "clients": args.clients,
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "send_message_per_s": {"median": round(rpc_median, 1), "runs": rpc_tps},
        "pgmq_send_per_s": {"median": round(raw_median, 1), "runs": raw_tps},
        "ratio_send_message_to_pgmq_send": round(rpc_median / raw_median, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
