"""The demo command (the README's main job) on a given database: texts, a document, a mention, a
scheduled message, a fan-out and a reply through send_message and send_to_groups, the poller,
statuses shown live up to `read`, a clean stop."""

import re
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
        out = done.stdout
        assert out.count("→ read") == 10, out
        read = [line for line in out.splitlines() if line.endswith("→ read")]
        kinds = [re.split(r"\s{2,}", line.strip())[2].split()[0] for line in read]
        assert sorted(kinds) == sorted(
            ["text"] * 3 + ["document", "mention", "scheduled", "reply"] + ["fan-out"] * 3
        ), out
        assert "document police-2026.pdf" in out
        # The scheduled message waits as `scheduled` until it falls due.
        assert re.search(r"scheduled\s+Hatırlatma.*\s{2}scheduled$", out, re.M), out
        assert "demo: poller stopped cleanly" in out
