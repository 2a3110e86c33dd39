"""The demo command (the README's main job) on a given database: messages through
send_message, the poller, statuses shown live up to `read`, a clean stop."""

import subprocess
import sys


def test_demo_shows_every_message_reaching_read(db_url):
    for _ in range(2):  # a second run on the same database works too
        done = subprocess.run(
            [sys.executable, "-m", "poller.cli", "demo", "--database-url", db_url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("→ read") == 4, done.stdout
        assert "demo: poller stopped cleanly" in done.stdout
