"""The benchmark scripts run and print their JSON (a short run; the figures are not asserted)."""

import json
import os
import subprocess
import sys

from poller.resources import PROJECT_ROOT
from tests.conftest import server_url


def test_send_message_bench_prints_json(pg_server):
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "bench" / "send_message_throughput.py"),
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--clients",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WA_DATABASE_URL": server_url(pg_server)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["send_message_per_s"]["median"] > 0
    assert report["pgmq_send_per_s"]["median"] > 0
    assert report["ratio_send_message_to_pgmq_send"] > 0
