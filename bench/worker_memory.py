"""Session workers: what they cost in memory, and the latency they add to a send. Prints JSON.

- pss_mb: PSS (/proc/PID/smaps_rollup: shared pages divided among the processes that map them)
  of `wa-poller run --transport neonize` and every process under it (multiprocessing's fork
  server and resource tracker, one worker per session) with 1, 5 and 20 sessions, --settle
  seconds after the last worker started. The sessions cannot reach WhatsApp here: each worker
  holds a neonize client that keeps reconnecting (a connected one holds its connection's state
  too). per_session = total / sessions, the poller's own share included; worker_pss and
  worker_uss: one worker's PSS, and its private pages alone (USS: what one more session adds).
  The budget, 50 MB a session, is checked against worker_uss at every count, and per_session at
  the largest.
- send_latency_ms: --sends sends one after the other, through a worker and in-process, on the
  simulated WhatsApp with no latency of its own; p50 and p99 of each, and what the worker adds.

Uses $WA_DATABASE_URL's server if set, otherwise an embedded PostgreSQL in .local/bench-pg.
"""

import argparse
import asyncio
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

from poller.settings import Settings
from poller.transports import make_transport
from poller.transports.base import ConnectionState, Receipt

BUDGET_MB = 50
GROUP = "120363000000000001@g.us"


def rollup_mb(pid: int) -> dict[str, float]:
    """PSS, and USS (its private pages: what the process alone holds)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, kb = line.split()[:2]
        fields[name.rstrip(":")] = int(kb) / 1024
    return {"pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def role(pid: int) -> str:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    if comm.startswith("wa-"):
        return "workers"
    if b"multiprocessing.forkserver" in cmdline:
        return "fork_server"
    if b"multiprocessing.resource_tracker" in cmdline:
        return "resource_tracker"
    return "other"


def measure(pid: int) -> dict[str, float]:
    """PSS by role, for the poller and each process under it that is still there, and the
    workers' USS."""
    sizes = {"poller": rollup_mb(pid)["pss"], "workers_uss": 0.0}
    for child in descendants(pid):
        name = role(child)
        try:
            memory = rollup_mb(child)
        except OSError:  # gone meanwhile
            continue
        sizes[name] = sizes.get(name, 0.0) + memory["pss"]
        if name == "workers":
            sizes["workers_uss"] += memory["uss"]
    return sizes


def poller_memory(url: str, poller_url: str, sessions: int, settle: float) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from whatsapp_sessions")
        for n in range(sessions):
            conn.execute(
                "insert into whatsapp_sessions (phone_number) values (%s)", [f"9055{n:08d}"]
            )
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "WA_DATABASE_URL": poller_url,
            "WA_AUTH_DIR": str(Path(tmp) / "auth_info"),
            "WA_HEARTBEAT_INTERVAL": "0.5",
            "WA_LEASE_TTL": "2",
            "WA_LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "poller.cli", "run", "--transport", "neonize"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while sum(1 for c in descendants(proc.pid) if role(c) == "workers") < sessions:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the poller did not start {sessions} workers")
                time.sleep(0.2)
            time.sleep(settle)
            samples = [measure(proc.pid)]
            for _ in range(2):
                time.sleep(1)
                samples.append(measure(proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    sizes = {
        name: round(statistics.median(s.get(name, 0.0) for s in samples), 1)
        for name in ("poller", "fork_server", "resource_tracker", "workers")
    }
    total = sum(sizes.values())
    uss = statistics.median(s["workers_uss"] for s in samples)
    return {
        **sizes,
        "total": round(total, 1),
        "per_session": round(total / sessions, 1),
        "worker_pss": round(sizes["workers"] / sessions, 1),
        "worker_uss": round(uss / sessions, 1),
    }


class Sink:
    """Nothing to record: the sends are what is timed."""

    def connection_changed(
        self, session_id: uuid.UUID, state: ConnectionState, reason: str | None
    ) -> None: ...
    def receipt(self, receipt: Receipt) -> None: ...
    def groups_changed(self, session_id: uuid.UUID) -> None: ...
    def qr_code(self, session_id: uuid.UUID, code: str) -> None: ...
    def paired(self, session_id: uuid.UUID, jid: str, lid: str | None) -> None: ...
    def logged_out(self, session_id: uuid.UUID, reason: str) -> None: ...
    def let_go(self, session_id: uuid.UUID, reason: str) -> None: ...


async def send_latencies(workers: bool, sends: int) -> list[float]:
    settings = Settings(transport="simulated", sim_latency_ms=0, sim_receipts=False)
    transport = make_transport(settings, workers=workers)
    client = transport.client(uuid.uuid4(), Sink())
    await client.start()
    while not client.connected:
        await asyncio.sleep(0.01)
    times = []
    for n in range(sends + sends // 10):  # the first tenth warms up, untimed
        started = time.perf_counter()
        await client.send_text(GROUP, "merhaba", uuid.uuid4())
        if n >= sends // 10:
            times.append((time.perf_counter() - started) * 1000)
    await transport.close()
    return times


def percentiles(times: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(times, n=100)
    return {"p50": round(cuts[49], 3), "p99": round(cuts[98], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", default="1,5,20", help="session counts, comma-separated")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--sends", type=int, default=5000)
    args = parser.parse_args()

    counts = [int(n) for n in args.sessions.split(",")]
    with bench_database("wa_worker_memory") as database:
        memory = {
            str(n): poller_memory(database.url, database.poller_url, n, args.settle) for n in counts
        }
    latency = {
        "in_process": percentiles(asyncio.run(send_latencies(False, args.sends))),
        "worker": percentiles(asyncio.run(send_latencies(True, args.sends))),
    }
    latency["added"] = {
        q: round(latency["worker"][q] - latency["in_process"][q], 3) for q in ("p50", "p99")
    }
    print(
        json.dumps(
            {
                "benchmark": "session workers: PSS of the poller and its workers, send latency",
                "transport": "neonize, offline (memory); simulated, no latency (sends)",
                "pss_mb": memory,
                "budget_per_session_mb": BUDGET_MB,
                "within_budget": all(m["worker_uss"] <= BUDGET_MB for m in memory.values())
                and memory[str(max(counts))]["per_session"] <= BUDGET_MB,
                "sends": args.sends,
                "send_latency_ms": latency,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
