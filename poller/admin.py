"""Admin commands: add a WhatsApp session, list them, and pair one (the QR code the holding
poller stores in whatsapp_sessions.qr_code, shown in the terminal until the phone scans it)."""

import io
import time
import uuid
from typing import Any

import psycopg

from poller.bootstrap import connect
from poller.errors import ConfigError, PollerError

NO_HOLDER_GRACE = 30.0  # seconds to wait for a poller to take a session before giving up


class PairingFailed(PollerError):
    """The phone did not scan a QR code in time, or no poller holds the session."""


def add_session(database_url: str, phone: str | None, owner_email: str | None) -> uuid.UUID:
    with connect(database_url) as conn:
        owner = None
        if owner_email:
            row = conn.execute(
                "select id from auth.users where email = %s", [owner_email]
            ).fetchone()
            if row is None:
                raise ConfigError(f"no user with e-mail {owner_email}")
            owner = row[0]
        row = conn.execute(
            "insert into public.whatsapp_sessions (user_id, phone_number, pair_requested_at) "
            "values (%s, %s, now()) returning id",
            [owner, phone],
        ).fetchone()
        assert row is not None
        return row[0]


def list_sessions(database_url: str) -> list[str]:
    with connect(database_url) as conn:
        rows = conn.execute(
            "select id, coalesce(phone_number, '-'), status::text, coalesce(status_reason, ''), "
            "coalesce(lease_owner, '-'), date_trunc('second', heartbeat_age) "
            "from public.whatsapp_sessions_overview order by id"
        ).fetchall()
    return [
        f"{r[0]}  {r[1]:<14} {r[2]:<12} held by {r[4]:<24} heartbeat {r[5]} ago  {r[3]}"
        for r in rows
    ]


def render_qr(code: str) -> str:
    import segno  # comes with neonize

    out = io.StringIO()
    segno.make_qr(code).terminal(out=out, compact=True)
    return out.getvalue()


def pair(database_url: str, session_id: uuid.UUID, timeout: float, poll: float = 0.5) -> str:
    """Ask the holding poller to pair `session_id`; print each QR code; return the number."""
    with connect(database_url) as conn:
        status, _, phone, paired_at, _, _ = _state(conn, session_id)
        if status == "connected" and paired_at is not None:
            print(f"session {session_id} is already paired and connected")
            return phone
        requested = conn.execute(
            "update public.whatsapp_sessions set pair_requested_at = now() where id = %s "
            "returning pair_requested_at",
            [session_id],
        ).fetchone()[0]
        print("On the phone: WhatsApp → Settings → Linked devices → Link a device, then scan:")
        shown = None
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            status, qr, phone, paired_at, held, reason = _state(conn, session_id)
            if paired_at is not None and paired_at >= requested and status == "connected":
                return phone
            if not held and time.monotonic() - started > NO_HOLDER_GRACE:
                raise PairingFailed(
                    "no poller holds this session: start `wa-poller run "
                    "--transport neonize` and try again"
                )
            if qr and qr != shown:
                print(render_qr(qr), flush=True)
                print("(WhatsApp replaces this code every few seconds; a new one follows.)")
                shown = qr
            time.sleep(poll)
        raise PairingFailed(f"no phone scanned a QR code within {timeout:g} s ({reason or status})")


def _state(conn: psycopg.Connection, session_id: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute(
        "select status::text, qr_code, phone_number, paired_at, "
        "lease_owner is not null and lease_expires_at > now(), status_reason "
        "from public.whatsapp_sessions where id = %s",
        [session_id],
    ).fetchone()
    if row is None:
        raise ConfigError(f"no session {session_id}")
    return row
