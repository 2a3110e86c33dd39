"""Seed data and the personas the tests act as (what PostgREST does per request: set the role
and the JWT claims inside the request's transaction)."""

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

PERSONAS = ("anon", "employee", "other_employee", "admin", "service_role", "wa_poller")

G1 = "120363000000000001@g.us"  # assigned to Claims (the employee's team)
G2 = "120363000000000002@g.us"  # assigned to Sales (the other employee's team)
G_INACTIVE = "120363000000000003@g.us"  # assigned to Claims, the account left it
G_READONLY = "120363000000000004-1600000000@g.us"  # assigned to Claims, announce-only
G_UNASSIGNED = "120363000000000005@g.us"  # assigned to nobody


@dataclass
class Seed:
    admin: uuid.UUID = field(default_factory=uuid.uuid4)
    employee: uuid.UUID = field(default_factory=uuid.uuid4)
    other_employee: uuid.UUID = field(default_factory=uuid.uuid4)
    impostor: uuid.UUID = field(default_factory=uuid.uuid4)  # claims admin in user_metadata only
    session: uuid.UUID = field(default_factory=uuid.uuid4)
    claims_team: uuid.UUID = field(default_factory=uuid.uuid4)
    sales_team: uuid.UUID = field(default_factory=uuid.uuid4)
    g1_assignment: uuid.UUID = field(default_factory=uuid.uuid4)
    m1: uuid.UUID = field(default_factory=uuid.uuid4)
    m2: uuid.UUID = field(default_factory=uuid.uuid4)

    def claims(self, persona: str) -> dict | None:
        user = {
            "admin": (self.admin, {"role": "admin"}, {}),
            "employee": (self.employee, {}, {}),
            "other_employee": (self.other_employee, {}, {}),
            "impostor": (self.impostor, {}, {"role": "admin"}),
        }
        if persona in user:
            sub, app_metadata, user_metadata = user[persona]
            return {
                "sub": str(sub),
                "role": "authenticated",
                "aud": "authenticated",
                "app_metadata": app_metadata,
                "user_metadata": user_metadata,
            }
        if persona in ("anon", "service_role"):
            return {"role": persona}
        return None  # wa_poller connects as itself, with no JWT


def db_role(persona: str) -> str:
    if persona in ("admin", "employee", "other_employee", "impostor"):
        return "authenticated"
    return persona


def seed(conn: psycopg.Connection) -> Seed:
    s = Seed()
    users = [
        (s.admin, "admin@agency.test", {"role": "admin"}, {}),
        (s.employee, "employee@agency.test", {}, {}),
        (s.other_employee, "other@agency.test", {}, {}),
        (s.impostor, "impostor@agency.test", {}, {"role": "admin"}),
    ]
    with conn.transaction():
        for uid, email, app_md, user_md in users:
            conn.execute(
                "insert into auth.users (id, email, raw_app_meta_data, raw_user_meta_data) "
                "values (%s, %s, %s, %s)",
                [uid, email, json.dumps(app_md), json.dumps(user_md)],
            )
        conn.execute(
            "insert into whatsapp_sessions (id, user_id, phone_number, status, qr_code, config) "
            "values (%s, %s, '905550000001', 'connected', 'secret-qr', '{\"browser\": \"x\"}')",
            [s.session, s.admin],
        )
        conn.execute(
            "insert into whatsapp_groups (jid, name, session_id, is_active, is_readonly, "
            "readonly_reason) values "
            "(%(g1)s, 'Hasar Takip', %(s)s, true, false, null), "
            "(%(g2)s, 'Satış', %(s)s, true, false, null), "
            "(%(gi)s, 'Eski Grup', %(s)s, false, false, null), "
            "(%(gr)s, 'Duyurular', %(s)s, true, true, 'announce-only and we are not an admin'), "
            "(%(gu)s, 'Atanmamış', %(s)s, true, false, null)",
            {
                "g1": G1,
                "g2": G2,
                "gi": G_INACTIVE,
                "gr": G_READONLY,
                "gu": G_UNASSIGNED,
                "s": s.session,
            },
        )
        conn.execute(
            "insert into employee_groups (id, name) values (%s, 'Claims'), (%s, 'Sales')",
            [s.claims_team, s.sales_team],
        )
        conn.execute(
            "insert into employee_group_members (employee_group_id, user_id) "
            "values (%s, %s), (%s, %s), (%s, %s)",
            [s.claims_team, s.employee, s.sales_team, s.other_employee, s.claims_team, s.impostor],
        )
        conn.execute(
            "insert into group_assignments (id, group_jid, employee_group_id) values "
            "(%s, %s, %s), (gen_random_uuid(), %s, %s), (gen_random_uuid(), %s, %s), "
            "(gen_random_uuid(), %s, %s)",
            [
                s.g1_assignment,
                G1,
                s.claims_team,
                G2,
                s.sales_team,
                G_INACTIVE,
                s.claims_team,
                G_READONLY,
                s.claims_team,
            ],
        )
        conn.execute(
            "insert into messages (id, group_jid, sender_id, content) values "
            "(%s, %s, %s, 'ilk mesaj'), (%s, %s, %s, 'second')",
            [s.m1, G1, s.employee, s.m2, G2, s.other_employee],
        )
        conn.execute(
            "insert into message_receipts (message_id, participant, delivered_at) "
            "values (%s, '905551111111@s.whatsapp.net', now())",
            [s.m1],
        )
        conn.execute(
            "insert into message_edits (message_id, group_jid, kind, old_content, new_content, "
            "actor_id, actor_email, status) "
            "values (%s, %s, 'edit', 'ilk', 'ilk mesaj', %s, 'employee@agency.test', 'sent')",
            [s.m1, G1, s.employee],
        )
        conn.execute(
            "insert into session_events (session_id, kind, reason) "
            "values (%s, 'keepalive_timeout', 'keepalive timeout: no answer from WhatsApp')",
            [s.session],
        )
    return s


@contextmanager
def acting_as(
    conn: psycopg.Connection, persona: str, s: Seed, *, commit: bool = False
) -> Iterator[psycopg.Connection]:
    """Run the block in a transaction as `persona`; rolled back afterwards unless `commit`."""
    with conn.transaction(force_rollback=not commit):
        conn.execute(f"set local role {db_role(persona)}")
        claims = s.claims(persona)
        if claims is not None:
            conn.execute("select set_config('request.jwt.claims', %s, true)", [json.dumps(claims)])
        yield conn


def send_as(
    conn: psycopg.Connection,
    persona: str,
    s: Seed,
    group_jid: str | None,
    content: str | None,
    client_msg_id: uuid.UUID | None = None,
    **options: object,
) -> dict:
    """Call the RPC as PostgREST would for `persona`, commit, and return the row as a dict.
    `options` are its optional parameters by name (attachment_bucket, attachment_path,
    reply_to, mentions, send_at), as PostgREST passes them."""
    named = "".join(f", {name} => %({name})s" for name in options)
    with acting_as(conn, persona, s, commit=True):
        cur = conn.execute(
            "select * from send_message(%(group_jid)s, %(content)s, %(client_msg_id)s"
            + named
            + ")",
            {"group_jid": group_jid, "content": content, "client_msg_id": client_msg_id, **options},
        )
        names = [d.name for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def send_to_groups_as(
    conn: psycopg.Connection,
    persona: str,
    s: Seed,
    group_jids: list[str] | None,
    content: str | None,
    client_msg_id: uuid.UUID | None = None,
    **options: object,
) -> list[dict]:
    """Call send_to_groups as PostgREST would for `persona`, commit, and return its rows."""
    named = "".join(f", {name} => %({name})s" for name in options)
    with acting_as(conn, persona, s, commit=True):
        cur = conn.execute(
            "select * from send_to_groups(%(group_jids)s, %(content)s, %(client_msg_id)s"
            + named
            + ")",
            {
                "group_jids": group_jids,
                "content": content,
                "client_msg_id": client_msg_id,
                **options,
            },
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def cancel_as(conn: psycopg.Connection, persona: str, s: Seed, message_id: uuid.UUID) -> dict:
    """Call cancel_message as PostgREST would for `persona`, commit, and return the row."""
    with acting_as(conn, persona, s, commit=True):
        cur = conn.execute("select * from cancel_message(%s)", [message_id])
        names = [d.name for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))
