"""deploy/wa-poller.service through systemd-analyze (Debian's systemd package; scripts/setup
installs it): it verifies clean, and its sandbox rates at most 2.0."""

import re
import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).parents[1] / "deploy" / "wa-poller.service"
INSTALLED = "/opt/wa-poller/.venv/bin/wa-poller"
MAX_EXPOSURE = 2.0


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    command = shutil.which("systemd-analyze")
    assert command, "systemd-analyze not found: scripts/setup installs Debian's systemd package"
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=120)


def settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_verify_finds_nothing(tmp_path):
    # verify checks that ExecStart's program exists; the poller is installed on the host, not
    # here, so a copy of the unit runs a stub in its place and keeps every other line.
    text = UNIT.read_text()
    assert f"\nExecStart={INSTALLED} run\n" in text
    stub = tmp_path / "wa-poller"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED}", f"ExecStart={stub}"))
    result = analyze("verify", "--man=false", str(copy))
    # Unknown keys and bad values are only warnings (exit 0): the output must be empty too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_security_exposure_at_most_2():
    result = analyze("security", "--offline=true", str(UNIT))
    assert (result.returncode, result.stderr) == (0, "")
    score = re.search(rf"Overall exposure level for {UNIT.name}: (\d+\.\d+) ", result.stdout)
    assert score, result.stdout
    assert float(score.group(1)) <= MAX_EXPOSURE, result.stdout


def test_sandbox_leaves_the_poller_what_it_needs():
    unit = settings()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["RestartPreventExitStatus"] == ["2"]  # a bad setting: restarting repeats it
    # A worker process per session: fork and exec stay allowed.
    assert unit["SystemCallFilter"] == ["@system-service"]
    assert set(unit["RestrictAddressFamilies"][0].split()) >= {"AF_INET", "AF_INET6", "AF_UNIX"}
    # neonize's callbacks are ctypes closures: libffi maps writable executable memory.
    assert "MemoryDenyWriteExecute" not in unit
