"""Helpers for the end-to-end tests: a team with groups, messages queued through send_message,
the poller started as a real process (as wa_poller), and the simulated WhatsApp's send log."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.conftest import poller_url

EMPLOYEE = uuid.UUID("00000000-0000-4000-8000-0000000e0001")


@dataclass
class Team:
    sessions: list[uuid.UUID] = field(default_factory=list)
    groups: dict[str, uuid.UUID] = field(default_factory=dict)  # jid -> session


def make_team(conn: psycopg.Connection, groups: int, sessions: int = 1) -> Team:
    """An employee in a team assigned `groups` groups spread over `sessions` sessions."""
    team = Team()
    with conn.transaction():
        conn.execute(
            "insert into auth.users (id, email) values (%s, 'e2e@agency.test') "
            "on conflict do nothing",
            [EMPLOYEE],
        )
        # These tests send thousands of messages from one employee: no quotas, as for an
        # automation (the quotas have tests of their own).
        conn.execute("update send_limits set sender_per_minute = null, group_pending = null")
        team_id = conn.execute(
            "insert into employee_groups (name) values ('E2E') returning id"
        ).fetchone()[0]
        conn.execute("insert into employee_group_members values (%s, %s)", [team_id, EMPLOYEE])
        for n in range(sessions):
            team.sessions.append(
                conn.execute(
                    "insert into whatsapp_sessions (phone_number) values (%s) returning id",
                    [f"90555{n:07d}"],
                ).fetchone()[0]
            )
        for n in range(groups):
            jid = f"1203630000{n:08d}@g.us"
            session = team.sessions[n % sessions]
            conn.execute(
                "insert into whatsapp_groups (jid, name, session_id) values (%s, %s, %s)",
                [jid, f"Grup {n}", session],
            )
            conn.execute(
                "insert into group_assignments (group_jid, employee_group_id) values (%s, %s)",
                [jid, team_id],
            )
            team.groups[jid] = session
    return team


def enqueue(conn: psycopg.Connection, jids: list[str], per_group: int, tag: str = "m") -> None:
    """per_group messages to each group, interleaved, through send_message as the employee."""
    claims = json.dumps({"sub": str(EMPLOYEE), "role": "authenticated"})
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", [claims])
        # The aggregate takes the ordered subquery's rows in order: round i to every group.
        conn.execute(
            "select count(send_message(s.g, %s || ' ' || s.i)) from ("
            "  select g, i from generate_series(1, %s) i,"
            "  unnest(%s::text[]) with ordinality as u(g, o) order by i, o) s",
            [tag, per_group, jids],
        )
        conn.execute("reset role")


class Poller:
    """`wa-poller run` as a child process, connected as wa_poller."""

    def __init__(self, db_url: str, workdir: Path, **settings: object) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "poller.log"
        self.sim_log = workdir / "sent.jsonl"
        self.control = workdir / "control"
        self.control.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "WA_DATABASE_URL": poller_url(db_url),
            "WA_SIM_LOG": str(self.sim_log),
            "WA_SIM_CONTROL_DIR": str(self.control),
            "WA_RATE_PER_MINUTE": "0",
            "WA_SIM_LATENCY_MS": "1",
            "WA_SIM_DELIVERED_AFTER_MS": "50",
            "WA_SIM_READ_AFTER_MS": "0",
            "WA_RETRY_INITIAL": "0.05",
            "WA_RETRY_MAX": "0.5",
            "WA_POLL_INTERVAL": "0.2",
            "WA_HEARTBEAT_INTERVAL": "0.5",
            "WA_LEASE_TTL": "2",
            "WA_LOG_LEVEL": "INFO",
            **{f"WA_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Poller":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "poller.cli", "run", "--transport", "simulated"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def disconnect(self, session: uuid.UUID | None = None) -> None:
        (self.control / (f"disconnected-{session}" if session else "disconnected")).touch()

    def reconnect(self, session: uuid.UUID | None = None) -> None:
        name = f"disconnected-{session}" if session else "disconnected"
        (self.control / name).unlink(missing_ok=True)

    def sends(self) -> list[dict]:
        if not self.sim_log.exists():
            return []
        return [json.loads(line) for line in self.sim_log.read_text().splitlines() if line]

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def wait_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status_counts(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("select status::text, count(*) from messages group by 1").fetchall())


def queue_order(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Each group's message ids in enqueue (queue) order: the order they must be sent in."""
    order: dict[str, list[str]] = {}
    for jid, message_id in conn.execute(
        "select m.group_jid, m.id::text from messages m join ("
        "  select msg_id, message->>'message_id' as mid from pgmq.a_whatsapp_outbound"
        "  union all select msg_id, message->>'message_id' from pgmq.q_whatsapp_outbound"
        ") q on q.mid = m.id::text order by q.msg_id"
    ):
        order.setdefault(jid, []).append(message_id)
    return order


def first_send_order(sends: list[dict]) -> dict[str, list[str]]:
    seen: set[str] = set()
    order: dict[str, list[str]] = {}
    for entry in sends:
        if entry["message_id"] not in seen:
            seen.add(entry["message_id"])
            order.setdefault(entry["group"], []).append(entry["message_id"])
    return order
