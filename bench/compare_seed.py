"""The project's outbound path against the seed's stack, in one run, side by side. Prints JSON.

Ours: bench/end_to_end.py's runs (pgbench calling send_message, a `wa-poller run` process, the
simulated WhatsApp). The seed's: bench/seed_stack/seed.js (Node, BullMQ on a Redis of this run's
own with AOF everysec, a worker updating PostgreSQL), on the same PostgreSQL server and database
(its own table, seed.messages). Both are measured with the same figures from the same columns:
created_at = the producer's transaction start (the enqueue), sent_at = WhatsApp's
acknowledgement, updated_at = the `sent` write's start (see end_to_end.figures).

Rounds alternate: each round runs paced then burst for both, the side that goes first swapping
every round; medians over the rounds. Both daemons stay up for the whole run (the idle one waits
on its wake-up: LISTEN with a 1 s poll, or Redis' blocking pop).

Needs Node 20 and redis-server on PATH; installs bench/seed_stack's packages (npm ci, as the
lockfile pins them) when they are missing.
"""

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import end_to_end as e2e
import psycopg
from benchlib import bench_database
from psycopg.conninfo import conninfo_to_dict

SEED = Path(__file__).resolve().parent / "seed_stack"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_url(conninfo: str) -> str:
    """A libpq conninfo as the URL node-postgres takes."""
    p = conninfo_to_dict(conninfo)
    auth = p.get("user", "postgres") + (f":{p['password']}" if p.get("password") else "")
    return f"postgresql://{auth}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}"


def ensure_packages() -> None:
    if shutil.which("node") is None or shutil.which("redis-server") is None:
        raise SystemExit("compare_seed needs node and redis-server on PATH")
    if not (SEED / "node_modules" / "bullmq").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SEED,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"npm ci in bench/seed_stack failed:\n{done.stderr}")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Redis of our own: AOF fsync'd every second, files in `workdir` (the seed's
    persistence; the machine's Redis, if any, is not touched)."""
    port = free_port()
    folder = workdir / "redis"
    folder.mkdir()
    log = open(folder / "redis.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            pass
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit("redis-server did not start")


def seed(command: str, pg_url: str, redis_url: str, *args: str) -> list[str]:
    return ["node", str(SEED / "seed.js"), command, "--pg", pg_url, "--redis", redis_url, *args]


def start_seed_worker(
    pg_url: str, redis_url: str, concurrency: int, pool: int, workdir: Path
) -> subprocess.Popen[str]:
    errors: IO[bytes] = open(workdir / "seed-worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        seed("worker", pg_url, redis_url, "--concurrency", str(concurrency), "--pool", str(pool)),
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.terminate()
        raise SystemExit("the seed's worker did not start: see seed-worker.log")
    return proc


def seed_run_once(
    url: str, pg_url: str, redis_url: str, total: int, producers: int, rate: int | None
) -> dict[str, object]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate seed.messages")
        conn.execute("vacuum (analyze) seed.messages")
    per = total // producers
    args = ["--total", str(per * producers), "--producers", str(producers)]
    args += ["--rate", str(rate or 0), "--groups", str(e2e.GROUPS), "--sender", str(e2e.EMPLOYEE)]
    # The producers are one Node process (as one API server), each with its own PostgreSQL and
    # Redis connection; one process per producer measured no faster on this 2-core machine
    # (1,230/s against 1,400/s): the machine's CPU, shared by all, is the limit.
    done = subprocess.run(
        seed("produce", pg_url, redis_url, *args),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"the seed's producer failed:\n{done.stderr}")
    e2e.wait_sent(url, "seed.messages", per * producers)
    return dict(e2e.figures(url, "seed.messages"))


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    e2e.add_load_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed-concurrency", type=int, default=50, help="BullMQ Worker")
    parser.add_argument("--seed-pool", type=int, default=20, help="the seed worker's pg pool")
    args = parser.parse_args()
    ensure_packages()

    paced_total = args.rate * args.seconds
    runs: dict[str, dict[str, list[dict[str, object]]]] = {
        side: {"paced": [], "burst": []} for side in ("ours", "seed")
    }
    with bench_database("wa_seed_compare") as database, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = database.url
        pg_url = node_url(url)
        e2e.prepare(url)
        redis, redis_url = start_redis(work)
        procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = [redis]
        try:
            subprocess.run(seed("schema", pg_url, redis_url), check=True, capture_output=True)
            procs.append(
                start_seed_worker(pg_url, redis_url, args.seed_concurrency, args.seed_pool, work)
            )
            procs.append(e2e.start_poller(database.poller_url, work))

            def ours(mode: str) -> None:
                if mode == "paced":
                    result = e2e.run_once(url, paced_total, 1, args.rate, work)
                else:
                    result = e2e.run_once(url, args.burst, args.producers, None, work)
                runs["ours"][mode].append(result)

            def theirs(mode: str) -> None:
                if mode == "paced":
                    result = seed_run_once(url, pg_url, redis_url, paced_total, 1, args.rate)
                else:
                    result = seed_run_once(url, pg_url, redis_url, args.burst, args.producers, None)
                runs["seed"][mode].append(result)

            for n in range(args.rounds):
                order = (ours, theirs) if n % 2 == 0 else (theirs, ours)
                for mode in ("paced", "burst"):
                    for side in order:
                        side(mode)
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)

    report = {
        side: {
            "paced": {
                "rate_per_s": args.rate,
                "seconds": args.seconds,
                **e2e.median_of(r["paced"]),
            },
            "burst": {"producers": args.producers, **e2e.median_of(r["burst"])},
        }
        for side, r in runs.items()
    }
    ours_, seed_ = report["ours"], report["seed"]

    def beside(mode: str, figure: str, with_ratio: bool = False) -> dict[str, float]:
        pair = {"ours": ours_[mode][figure], "seed": seed_[mode][figure]}
        return {**pair, "ours_over_seed": ratio(pair["ours"], pair["seed"])} if with_ratio else pair

    side_by_side = {
        "burst_end_to_end_per_s": beside("burst", "end_to_end_per_s", with_ratio=True),
        "burst_latency_p50_ms": beside("burst", "latency_p50_ms"),
        "burst_latency_p99_ms": beside("burst", "latency_p99_ms"),
        "paced_end_to_end_per_s": beside("paced", "end_to_end_per_s"),
        "paced_latency_p50_ms": beside("paced", "latency_p50_ms", with_ratio=True),
        "paced_latency_p99_ms": beside("paced", "latency_p99_ms", with_ratio=True),
    }

    def ratio_of(figure: str) -> float:
        return side_by_side[figure]["ours_over_seed"]

    print(
        json.dumps(
            {
                "benchmark": "end to end, ours (send_message → pgmq → poller) against the seed's "
                "stack (PostgreSQL row + BullMQ job → BullMQ worker → PostgreSQL update), same run",
                "groups": e2e.GROUPS,
                "rounds": args.rounds,
                "seed_stack": {
                    "worker_concurrency": args.seed_concurrency,
                    "pg_pool": args.seed_pool,
                    "redis": "appendonly yes, appendfsync everysec",
                },
                "side_by_side": side_by_side,
                "targets": {
                    "burst_end_to_end_at_least_1_5x_seed": ratio_of("burst_end_to_end_per_s")
                    >= 1.5,
                    "paced_p50_at_most_seed": ratio_of("paced_latency_p50_ms") <= 1.0,
                    "paced_p99_at_most_seed": ratio_of("paced_latency_p99_ms") <= 1.0,
                },
                "ours_paced_breakdown": ours_["paced"].get("breakdown"),
                "ours": ours_,
                "seed": seed_,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
