"""The send-message Edge Function under Deno against calling send_message over SQL, at the same
concurrency, in one run, alternating rounds; prints JSON: requests/s and p99 latency (medians
of the rounds) and the CPU time the function itself spends per request (Deno shares the two
cores with PostgreSQL: that is what the function costs the database's throughput).

Load: wrk (Debian's package, C, one thread) posts to the function on loopback; pgbench runs the
RPC as PostgREST does (send_message_throughput.py's script, one round trip per call). Both keep
`--connections` requests in flight; the function's pool has as many database connections.
wrk rather than a Node load generator: on two cores a generator in JavaScript would take a core
from the server it measures.

Usage: .venv/bin/python bench/edge_function.py [--seconds 10] [--rounds 3] [--connections 16]
Uses $WA_DATABASE_URL's server if set (a database wa_bench_edge is made on it), otherwise an
embedded PostgreSQL in .local/bench-pg.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from benchlib import bench_database
from psycopg.conninfo import conninfo_to_dict
from send_message_throughput import EMPLOYEES, GROUPS, RPC_SCRIPT, prepare

from poller.localpg import free_port, pg_bindir

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_DIR = ROOT / "supabase" / "functions" / "send-message"
DENO = ROOT / "tools" / "node_modules" / ".bin" / "deno"
PATH = "/functions/v1/send-message"


def hs256(claims: dict, secret: str) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{part(signature.digest())}"


def wrk_script(tokens: list[str]) -> str:
    """Each request: a random employee's JWT and group, the body pgbench's script sends."""
    quoted = ", ".join(f'"{t}"' for t in tokens)
    return f"""
local tokens = {{{quoted}}}
request = function()
  local g = math.random(1, {GROUPS})
  local body = string.format('{{"group_jid": "1203630000000%05d@g.us", '
    .. '"content": "Poliçe yenileme hatırlatması #%d"}}', g, g)
  local headers = {{["Content-Type"] = "application/json",
                    ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)]}}
  return wrk.format("POST", "{PATH}", headers, body)
end
"""


def as_url(conninfo: str) -> str:
    """postgres.js takes a URL, not libpq's key=value string."""
    params = conninfo_to_dict(conninfo)
    password = f":{quote(params['password'])}" if params.get("password") else ""
    return (
        f"postgresql://{quote(params['user'])}{password}@{params['host']}:{params['port']}"
        f"/{quote(params['dbname'])}"
    )


def start_function(db_url: str, secret: str, connections: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "SUPABASE_DB_URL": as_url(db_url),
        "SUPABASE_JWT_SECRET": secret,
        "SEND_MESSAGE_POOL_SIZE": str(connections),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "NO_COLOR": "1",
    }
    server = subprocess.Popen(
        [str(DENO), "run", "--frozen", "--allow-net", "--allow-env", "index.ts"],
        cwd=FUNCTION_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + PATH, timeout=1)
        except urllib.error.HTTPError:
            return server, base  # GET is 405: it is serving
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the function did not start") from None
            time.sleep(0.1)


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(base: str, script: Path, seconds: int, connections: int) -> tuple[float, float, int]:
    """Requests per second, the p99 latency in ms and the number of requests."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    done = subprocess.run([*command, base], capture_output=True, text=True, check=False)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    p99 = re.search(r"^\s+99%\s+(\S+)", done.stdout, re.MULTILINE)
    count = re.search(r"(\d+) requests in", done.stdout)
    if done.returncode != 0 or not (rate and p99 and count) or "Non-2xx" in done.stdout:
        raise SystemExit(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    return float(rate.group(1)), to_ms(p99.group(1)), int(count.group(1))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def edge_run(
    db_url: str, secret: str, script: Path, seconds: int, connections: int
) -> tuple[float, float, float]:
    """One round through a function started for it, with a pool of new connections, as pgbench
    connects anew at each run: a connection that has been calling send_message since the table
    was empty keeps plans made for an empty table (a whole scan of messages for the scheduled
    check) until autovacuum analyzes it, and both sides should pay that alike. After a warm-up
    for V8's JIT. Returns wrk's figures and the function's own CPU time per request in
    microseconds: what the function adds to each call on the machine's cores."""
    server, base = start_function(db_url, secret, connections)
    try:
        wrk(base, script, 1, connections)
        before = cpu_seconds(server.pid)
        rate, p99, count = wrk(base, script, seconds, connections)
        return rate, p99, (cpu_seconds(server.pid) - before) / count * 1e6
    finally:
        server.terminate()
        server.wait(timeout=10)


def pgbench(url: str, seconds: int, clients: int) -> tuple[float, float]:
    """Calls per second and the p99 of the per-call latencies pgbench logs (-l)."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "rpc.sql"
        script.write_text(RPC_SCRIPT)
        command = [str(pg_bindir() / "pgbench"), "-n", "-c", str(clients), "-j", "1"]
        command += ["-T", str(seconds), "-l", "--log-prefix", f"{folder}/log", "-f", str(script)]
        done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
        rate = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
        if done.returncode != 0 or rate is None:
            raise SystemExit(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
        # Each line: client, transaction number, latency in microseconds, ...
        latencies = sorted(
            int(line.split()[2])
            for log in Path(folder).glob("log.*")
            for line in log.read_text().splitlines()
        )
    return float(rate.group(1)), latencies[int(len(latencies) * 0.99)] / 1000


def summary(runs: list[tuple[float, float]]) -> dict:
    return {
        "requests_per_s": round(statistics.median(r[0] for r in runs), 1),
        "p99_ms": round(statistics.median(r[1] for r in runs), 2),
        "runs": [{"requests_per_s": r[0], "p99_ms": round(r[1], 2)} for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    parser.add_argument("--connections", type=int, default=16, help="requests in flight")
    args = parser.parse_args()

    secret = secrets.token_urlsafe(32)
    expiry = int(time.time()) + 3600
    tokens = [
        hs256({"sub": str(e), "role": "authenticated", "exp": expiry}, secret) for e in EMPLOYEES
    ]
    edge_runs: list[tuple[float, float, float]] = []
    sql_runs: list[tuple[float, float]] = []
    with bench_database("wa_bench_edge") as database, tempfile.TemporaryDirectory() as folder:
        prepare(database.url)
        script = Path(folder) / "send.lua"
        script.write_text(wrk_script(tokens))
        url = database.url
        for round_no in range(args.rounds):
            order = [
                (lambda: edge_run(url, secret, script, args.seconds, args.connections), edge_runs),
                (lambda: pgbench(url, args.seconds, args.connections), sql_runs),
            ]
            # Alternate which goes first, so table growth and noise fall on both alike.
            for run, results in order if round_no % 2 == 0 else reversed(order):
                results.append(run())
    edge, sql = summary(edge_runs), summary(sql_runs)
    edge["function_cpu_us_per_request"] = round(statistics.median(r[2] for r in edge_runs), 1)
    ratio = edge["requests_per_s"] / sql["requests_per_s"]
    report = {
        "benchmark": "send-message Edge Function vs send_message over SQL",
        "connections": args.connections,
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "edge_function": edge,
        "sql": sql,
        "ratio_edge_to_sql_requests_per_s": round(ratio, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
