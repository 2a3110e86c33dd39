"""The demo: a database made ready from nothing, demo data, the poller running on the simulated
WhatsApp, and messages sent through send_message and send_to_groups as a demo employee (exactly
the frontend's RPC calls): texts, a document from Storage, a reply, a mention, a scheduled
message and a fan-out to every group, their statuses shown live as they go
(scheduled →) pending → sent → delivered → read.

Storage cannot run here: a small stand-in serves the demo's document on Storage's authenticated
download route, the one the poller reads (tests/storage_server.py is the full one).
"""

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import psycopg

from poller.bootstrap import bootstrap
from poller.daemon import run_daemon
from poller.localpg import LocalPostgres, default_folder
from poller.resources import PROJECT_ROOT
from poller.settings import Settings

DEMO_DB = "wa_demo"
DEMO_POLLER_PASSWORD = "wa-demo"
DEMO_EMPLOYEE = "00000000-0000-4000-8000-00000000e001"
CLAIMS, RENEWALS, NEWS = (
    "120363000000000101@g.us",
    "120363000000000102@g.us",
    "120363000000000103@g.us",
)
DEMO_MESSAGES = [
    (CLAIMS, "Sayın müşterimiz, hasar dosyanız açıldı. 🚗"),
    (RENEWALS, "Poliçeniz yarın yenileniyor; sorularınız için buradayız."),
    (CLAIMS, "Eksper yarın 10:00'da geliyor."),
]
DEMO_FILE = (
    f"{CLAIMS}/police-2026.pdf"  # under its group's JID: the seed's policy lets the team read it
)
DEMO_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)
DEMO_KEY = "sb_secret_demo"  # the stand-in Storage's service key
# The renewals group as a sync of a LID-addressed group leaves it: its members by LID.
RENEWALS_PARTICIPANTS = [
    {"jid": "81234567890123@lid", "lid": None, "phone_number": "905551112233@s.whatsapp.net"},
    {"jid": "89876543210987@lid", "lid": None, "phone_number": "905554445566@s.whatsapp.net"},
]
SCHEDULED_IN = 3.0  # seconds
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
            _demo_extras(conn)
        with demo_storage({DEMO_FILE: DEMO_PDF}) as storage_url:
            settings = Settings(
                database_url=poller_url,
                transport="simulated",
                log_level="WARNING",
                rate_per_minute=120,
                rate_jitter=0.3,
                sim_latency_ms=250,
                sim_delivered_after_ms=800,
                sim_read_after_ms=2000,
                storage_url=storage_url,
                service_role_key=DEMO_KEY,
            )
            asyncio.run(_demo(url, settings))


def _demo_extras(conn: psycopg.Connection) -> None:
    """What the demo's richer messages need: the document as Storage records an upload, and
    the renewals group's members as a group sync records them."""
    metadata = {"size": len(DEMO_PDF), "mimetype": "application/pdf", "httpStatusCode": 200}
    conn.execute(
        "insert into storage.objects (bucket_id, name, metadata) values ('claims', %s, %s) "
        "on conflict (bucket_id, name) do update set metadata = excluded.metadata",
        [DEMO_FILE, json.dumps(metadata)],
    )
    conn.execute(
        "update public.whatsapp_groups set participants = %s where jid = %s",
        [json.dumps(RENEWALS_PARTICIPANTS), RENEWALS],
    )


@contextmanager
def demo_storage(files: dict[str, bytes]) -> Iterator[str]:
    """A stand-in Storage on a free local port serving `files` (path in bucket `claims` →
    bytes) on the authenticated download route; yields the project URL to give the poller."""
    route = "/storage/v1/object/authenticated/claims/"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(unquote(self.path.removeprefix(route)))
            allowed = self.headers.get("Authorization") == f"Bearer {DEMO_KEY}"
            if self.path.startswith(route) and body is not None and allowed:
                self._answer(200, "application/pdf", body)
            else:  # Storage's answer for a missing object
                error = {"statusCode": "404", "error": "not_found", "message": "Object not found"}
                self._answer(400, "application/json", json.dumps(error).encode())

        def _answer(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the demo shows the messages' statuses, not Storage's requests

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


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


async def _as_employee(conn: psycopg.AsyncConnection, sql: str, params: list[object]) -> list[str]:
    """The ids of the rows an RPC call returns, made as the demo employee (as PostgREST)."""
    claims = json.dumps({"sub": DEMO_EMPLOYEE, "role": "authenticated"})
    async with conn.transaction():
        await conn.execute("set local role authenticated")
        await conn.execute("select set_config('request.jwt.claims', %s, true)", [claims])
        cur = await conn.execute(sql, params)
        return [row[0] for row in await cur.fetchall()]


async def _send(conn: psycopg.AsyncConnection) -> list[str]:
    ids = []
    for jid, text in DEMO_MESSAGES:
        ids += await _as_employee(conn, "select id::text from send_message(%s, %s)", [jid, text])
    ids += await _as_employee(
        conn,
        "select id::text from send_message(%s, %s, attachment_bucket => 'claims', "
        "attachment_path => %s)",
        [CLAIMS, "Poliçeniz ekte; imzalayıp geri gönderebilirsiniz.", DEMO_FILE],
    )
    ids += await _as_employee(
        conn,
        "select id::text from send_message(%s, %s, mentions => %s)",
        [
            RENEWALS,
            "Sayın @905551112233, yenileme teklifiniz hazır.",
            ["905551112233@s.whatsapp.net"],
        ],
    )
    send_at = datetime.now(UTC) + timedelta(seconds=SCHEDULED_IN)
    ids += await _as_employee(
        conn,
        "select id::text from send_message(%s, %s, send_at => %s)",
        [CLAIMS, "Hatırlatma: eksper randevunuz yarın 10:00'da.", send_at],
    )
    ids += await _as_employee(
        conn,
        "select id::text from send_to_groups(%s, %s)",
        [[CLAIMS, RENEWALS, NEWS], "Bayram süresince ofisimiz kapalıdır. 🌙"],
    )
    # A reply quotes a message WhatsApp has: the first one, once it has gone.
    while not await _sent(conn, ids[0]):
        await asyncio.sleep(0.1)
    ids += await _as_employee(
        conn,
        "select id::text from send_message(%s, %s, reply_to => %s)",
        [CLAIMS, "Ek bilgi: dosya numaranız 2026-0142.", ids[0]],
    )
    print(
        f"demo: {len(ids)} messages sent through send_message and send_to_groups as "
        "employee@demo.agency"
    )
    return ids


async def _sent(conn: psycopg.AsyncConnection, message_id: str) -> bool:
    cur = await conn.execute("select wa_message_id from messages where id = %s", [message_id])
    row = await cur.fetchone()
    return row is not None and row[0] is not None


async def _watch(conn: psycopg.AsyncConnection, ids: list[str], timeout: float) -> None:
    """Print every status change until all messages are read (or failed)."""
    seen: dict[str, str] = {}
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        cur = await conn.execute(
            "select m.id::text, g.name, m.content, m.status::text, "
            "  case when m.attachment_file_name is not null"
            "       then 'document ' || m.attachment_file_name"
            "       when m.reply_to is not null then 'reply'"
            "       when m.mentions is not null then 'mention'"
            "       when m.batch_id is not null then 'fan-out'"
            "       when m.send_at is not null then 'scheduled'"
            "       else 'text' end "
            "from messages m join whatsapp_groups g on g.jid = m.group_jid "
            "where m.id = any(%s::uuid[]) order by m.created_at",
            [ids],
        )
        for message_id, group, content, status, kind in await cur.fetchall():
            if seen.get(message_id) != status:
                before = seen.get(message_id)
                arrow = f"{before} → {status}" if before else status
                stamp = f"{time.monotonic() - started:6.2f}s"
                print(f"{stamp}  {group:<20} {kind:<24} {content[:36]:<36}  {arrow}")
                seen[message_id] = status
        if len(seen) == len(ids) and set(seen.values()) <= FINAL:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.sleep(0.1)
    raise TimeoutError("the demo messages did not all reach 'read' in time")
