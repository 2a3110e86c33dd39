"""The demo: a database made ready from nothing, demo data, the poller running on the simulated
WhatsApp, and messages sent through send_message as a demo employee (exactly the frontend's RPC
call), their statuses shown live as they go pending → sent → delivered → read."""

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from poller.bootstrap import bootstrap
from poller.daemon import run_daemon
from poller.localpg import LocalPostgres, default_folder
from poller.resources import PROJECT_ROOT
from poller.settings import Settings

DEMO_DB = "wa_demo"
DEMO_POLLER_PASSWORD = "wa-demo"
DEMO_EMPLOYEE = "00000000-0000-4000-8000-00000000e001"
DEMO_MESSAGES = [
    ("120363000000000101@g.us", "Sayın müşterimiz, hasar dosyanız açıldı. 🚗"),
    ("120363000000000102@g.us", "Poliçeniz yarın yenileniyor; sorularınız için buradayız."),
    ("120363000000000103@g.us", "Bayram süresince ofisimiz kapalıdır. 🌙"),
    ("120363000000000101@g.us", "Eksper yarın 10:00'da geliyor."),
]
FINAL = {"read", "failed"}


@contextmanager
def demo_database(database_url: str | None) -> Iterator[tuple[str, str]]:
    """(admin URL, poller URL): the given database, or a fresh one on an embedded PostgreSQL
    that is stopped afterwards."""
    if database_url:
        yield database_url, database_url
        return
    server = LocalPostgres(default_folder("pg"))
    print(f"demo: starting an embedded PostgreSQL in {server.folder} on port {server.port}")
    server.start()
    try:
        url = server.create_database(DEMO_DB)
        poller_url = url.replace("postgres@", f"wa_poller:{DEMO_POLLER_PASSWORD}@", 1)
        yield url, poller_url
    finally:
        server.stop()
        print("demo: embedded PostgreSQL stopped")


def run_demo(database_url: str | None = None) -> None:
    explicit = database_url or os.environ.get("WA_DATABASE_URL")
    with demo_database(explicit) as (url, poller_url):
        password = None if explicit else DEMO_POLLER_PASSWORD
        for line in bootstrap(url, poller_password=password).lines():
            print(f"bootstrap: {line}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute((PROJECT_ROOT / "supabase" / "seed.sql").read_text().encode())
        settings = Settings(
            database_url=poller_url,
            transport="simulated",
            log_level="WARNING",
            rate_per_minute=120,
            rate_jitter=0.3,
            sim_latency_ms=250,
            sim_delivered_after_ms=800,
            sim_read_after_ms=2000,
        )
        asyncio.run(_demo(url, settings))


async def _demo(url: str, settings: Settings) -> None:
    stop = asyncio.Event()
    poller = asyncio.create_task(run_daemon(settings, stop))
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            ids = await _send(conn)
            await _watch(conn, ids, timeout=60)
    finally:
        stop.set()
        await poller
        print("demo: poller stopped cleanly")


async def _send(conn: psycopg.AsyncConnection) -> list[str]:
    claims = json.dumps({"sub": DEMO_EMPLOYEE, "role": "authenticated"})
    ids = []
    for jid, text in DEMO_MESSAGES:
        async with conn.transaction():
            await conn.execute("set local role authenticated")
            await conn.execute("select set_config('request.jwt.claims', %s, true)", [claims])
            cur = await conn.execute("select id::text from send_message(%s, %s)", [jid, text])
            row = await cur.fetchone()
            assert row is not None
            ids.append(row[0])
    print(f"demo: {len(ids)} messages sent through send_message as employee@demo.agency")
    return ids


async def _watch(conn: psycopg.AsyncConnection, ids: list[str], timeout: float) -> None:
    """Print every status change until all messages are read (or failed)."""
    seen: dict[str, str] = {}
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        cur = await conn.execute(
            "select m.id::text, g.name, m.content, m.status::text from messages m "
            "join whatsapp_groups g on g.jid = m.group_jid where m.id = any(%s::uuid[]) "
            "order by m.created_at",
            [ids],
        )
        for message_id, group, content, status in await cur.fetchall():
            if seen.get(message_id) != status:
                before = seen.get(message_id)
                arrow = f"{before} → {status}" if before else status
                stamp = f"{time.monotonic() - started:6.2f}s"
                print(f"{stamp}  {group:<20} {content[:40]:<40}  {arrow}")
                seen[message_id] = status
        if len(seen) == len(ids) and set(seen.values()) <= FINAL:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.sleep(0.1)
    raise TimeoutError("the demo messages did not all reach 'read' in time")
