"""The benchmark scripts run and print their JSON (short runs; the figures are not asserted)."""

import json
import os
import subprocess
import sys

from poller.resources import PROJECT_ROOT
from tests.conftest import server_url


def run_bench(pg_server, script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WA_DATABASE_URL": server_url(pg_server)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_send_message_bench_prints_json(pg_server):
    report = run_bench(
        pg_server, "send_message_throughput.py", "--seconds", "1", "--rounds", "1", "--clients", "2"
    )
    assert report["send_message_per_s"]["median"] > 0
    assert report["pgmq_send_per_s"]["median"] > 0
    assert report["ratio_send_message_to_pgmq_send"] > 0


def test_end_to_end_bench_prints_json(pg_server):
    report = run_bench(
        pg_server,
        "end_to_end.py",
        "--runs",
        "1",
        "--rate",
        "50",
        "--seconds",
        "1",
        "--burst",
        "400",
    )
    assert report["paced"]["messages"] == 50
    assert report["burst"]["messages"] == 400
    for mode in ("paced", "burst"):
        assert report[mode]["end_to_end_per_s"] > 0
        assert 0 < report[mode]["latency_p50_ms"] <= report[mode]["latency_p99_ms"]


def test_grouped_reads_bench_prints_json(pg_server):
    report = run_bench(
        pg_server, "grouped_reads.py", "--messages", "400", "--groups", "5", "--runs", "1"
    )
    assert set(report["messages_per_s"]) == {
        "read_grouped",
        "read_grouped_rr",
        "read_grouped_head",
        "read",
        "take_outbound",
    }
    assert all(rate > 0 for rate in report["messages_per_s"].values())


def test_group_sync_bench_prints_json(pg_server):
    report = run_bench(
        pg_server, "group_sync.py", "--groups", "20", "--participants", "16", "--runs", "1"
    )
    assert report["groups"] == 20
    assert report["first_sync_s"] > 0 and report["resync_s"] > 0


def test_backlog_reads_bench_prints_json(pg_server):
    report = run_bench(
        pg_server,
        "backlog_reads.py",
        "--shapes",
        "10x20,2x100,20x20",
        "--batch",
        "50",
        "--runs",
        "1",
        "--warmup",
        "1",
    )
    assert [b["shape"] for b in report["backlogs"]] == ["10x20", "2x100", "20x20"]
    for backlog in report["backlogs"]:
        assert backlog["take_ms"] > 0 and backlog["pgmq_read_ms"] > 0
        assert backlog["take_stale_plan_ms"] > 0 and backlog["take_over_read"] > 0
        assert backlog["take_rows"] == backlog["take_claimed"] == backlog["read_rows"] == 50
    assert report["summary"]["smallest"] == "10x20"
    assert set(report["summary"]["largest_take_over_smallest"]) == {"20x20"}


def test_worker_memory_bench_prints_json(pg_server):
    report = run_bench(
        pg_server, "worker_memory.py", "--sessions", "1", "--settle", "1", "--sends", "200"
    )
    assert report["pss_mb"]["1"]["workers"] > 0
    worker = report["send_latency_ms"]["worker"]
    assert 0 < worker["p50"] <= worker["p99"]
