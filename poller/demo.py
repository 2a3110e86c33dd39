"""The demo: a local database made ready from nothing, demo data, and messages sent through
send_message as a demo employee, exactly as the frontend's RPC call would."""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from poller.bootstrap import bootstrap
from poller.localpg import LocalPostgres, default_folder
from poller.resources import PROJECT_ROOT

DEMO_DB = "wa_demo"
DEMO_EMPLOYEE = "00000000-0000-4000-8000-00000000e001"
DEMO_MESSAGES = [
    ("120363000000000101@g.us", "Sayın müşterimiz, hasar dosyanız açıldı. 🚗"),
    ("120363000000000102@g.us", "Poliçeniz yarın yenileniyor; sorularınız için buradayız."),
    ("120363000000000103@g.us", "Bayram süresince ofisimiz kapalıdır. 🌙"),
]


@contextmanager
def demo_database(database_url: str | None) -> Iterator[str]:
    """The given database, or a fresh one on an embedded PostgreSQL stopped afterwards."""
    if database_url:
        yield database_url
        return
    server = LocalPostgres(default_folder("pg"))
    print(f"demo: starting an embedded PostgreSQL in {server.folder} on port {server.port}")
    server.start()
    try:
        yield server.create_database(DEMO_DB)
    finally:
        server.stop()
        print("demo: embedded PostgreSQL stopped")


def run_demo(database_url: str | None = None) -> None:
    with demo_database(database_url or os.environ.get("WA_DATABASE_URL")) as url:
        for line in bootstrap(url).lines():
            print(f"bootstrap: {line}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(Path(PROJECT_ROOT / "supabase" / "seed.sql").read_text().encode())
            claims = json.dumps({"sub": DEMO_EMPLOYEE, "role": "authenticated"})
            for jid, text in DEMO_MESSAGES:
                with conn.transaction():
                    conn.execute("set local role authenticated")
                    conn.execute("select set_config('request.jwt.claims', %s, true)", [claims])
                    msg_id, status = conn.execute(
                        "select id, status from send_message(%s, %s)", [jid, text]
                    ).fetchone()
                print(f"send_message({jid}) -> {msg_id} {status}")
            depth = conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0]
            print(f"queue whatsapp_outbound: {depth} message(s) waiting for the poller")
