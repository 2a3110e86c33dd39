"""Rich messages in SQL: attachments from Storage (checked under the caller's RLS and against
WhatsApp's limits per kind), replies, mentions, scheduled sends and cancel_message, the
send_to_groups fan-out, and the `details` the poller's take returns. Each refusal with its
SQLSTATE and nothing written; each function as every persona."""

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.personas import (
    G1,
    G2,
    G_INACTIVE,
    G_READONLY,
    G_UNASSIGNED,
    Seed,
    acting_as,
    cancel_as,
    send_as,
    send_to_groups_as,
)

MB = 1024 * 1024
UNKNOWN = "120363999999999999@g.us"
# G1's participants as group sync stores them: a phone-addressed member, a LID-addressed one
# (its `jid` is its LID, its phone JID in `phone_number`), and our own account.
ALI = {
    "jid": "905551111111@s.whatsapp.net",
    "lid": "111111111111111@lid",
    "phone_number": "905551111111@s.whatsapp.net",
    "is_admin": False,
    "is_super_admin": False,
}
AYSE = {
    "jid": "222222222222222@lid",
    "lid": None,
    "phone_number": "905552222222@s.whatsapp.net",
    "is_admin": False,
    "is_super_admin": False,
}
US = {
    "jid": "905550000001@s.whatsapp.net",
    "lid": "900000000000001@lid",
    "phone_number": None,
    "is_admin": True,
    "is_super_admin": False,
}


def counts(conn: psycopg.Connection) -> tuple[int, int]:
    return (
        conn.execute("select count(*) from messages").fetchone()[0],
        conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0],
    )


def jobs(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """The queue in its order: (message id, group)."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            "select message ->> 'message_id', headers ->> 'x-pgmq-group' "
            "from pgmq.q_whatsapp_outbound order by msg_id"
        )
    ]


def refusal(call) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        call()
    return caught.value


def obj(conn, path: str, owner: uuid.UUID, size: int | None, mimetype: str | None) -> None:
    """An object as Storage records it once uploaded (metadata as the server writes it)."""
    metadata = {"eTag": '"x"', "cacheControl": "max-age=3600", "httpStatusCode": 200}
    if size is not None:
        metadata |= {"size": size, "contentLength": size}
    if mimetype is not None:
        metadata["mimetype"] = mimetype
    conn.execute(
        "insert into storage.objects (bucket_id, name, owner, owner_id, metadata) "
        "values ('claims', %s, %s, %s, %s)",
        [path, owner, str(owner), json.dumps(metadata)],
    )


@pytest.fixture
def world(conn, data: Seed) -> Seed:
    """The seed, G1's participants, and a Storage bucket whose policies let each user read
    their own objects and admins every object, with a restrictive policy hiding quarantined
    ones. The seed's queued messages are cleared."""
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute("update messages set status = 'failed', error_log = 'seed'")
    conn.execute(
        "update whatsapp_groups set participants = %s where jid = %s",
        [json.dumps([ALI, AYSE, US]), G1],
    )
    conn.execute(
        "update whatsapp_sessions set wa_jid = '905550000001@s.whatsapp.net', "
        "wa_lid = '900000000000001@lid', lease_owner = 'me', "
        "lease_expires_at = now() + interval '1 hour'"
    )
    conn.execute("insert into storage.buckets (id, name) values ('claims', 'claims')")
    conn.execute(
        'create policy "Users can read their own claim files" on storage.objects '
        "for select to authenticated "
        "using (bucket_id = 'claims' and owner_id = (select auth.uid())::text)"
    )
    conn.execute(
        'create policy "Admins can read every claim file" on storage.objects '
        "for select to authenticated "
        "using (bucket_id = 'claims' "
        "and (select auth.jwt()) -> 'app_metadata' ->> 'role' = 'admin')"
    )
    conn.execute(
        'create policy "Nobody reads quarantined files" on storage.objects as restrictive '
        "for select to authenticated using (name not like 'quarantine/%')"
    )
    e = data.employee
    obj(conn, "2026/policy.pdf", e, 2 * MB, "application/pdf")
    obj(conn, "2026/photo.jpg", e, 1 * MB, "image/jpeg")
    obj(conn, "2026/scan.png", e, 5 * MB, "image/png")  # exactly the image limit
    obj(conn, "2026/big.png", e, 5 * MB + 1, "image/png")
    obj(conn, "2026/video.mp4", e, 99 * MB, "video/mp4; codecs=avc1")  # goes as a document
    obj(conn, "2026/huge.pdf", e, 100 * MB + 1, "application/pdf")
    obj(conn, "2026/untyped", e, 10, None)
    obj(conn, "2026/odd", e, 10, "not a type")
    obj(conn, "2026/uploading.pdf", e, None, "application/pdf")
    obj(conn, "quarantine/virus.pdf", e, 10, "application/pdf")
    obj(conn, "sales/offer.pdf", data.other_employee, 10, "application/pdf")
    return data


def take(conn, s: Seed, ttl: float = 3600) -> list[dict]:
    """The poller's read, as wa_poller: what it would send now, with the details."""
    with conn.transaction():
        conn.execute("set local role wa_poller")
        cur = conn.execute(
            "select * from private.take_outbound('me', %s, array[100], '{}', 30, 100, %s)",
            [[s.session], ttl],
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def mark_sent(conn, message_id: uuid.UUID, wa_id: str) -> None:
    conn.execute(
        "update messages set status = 'sent', wa_message_id = %s, sent_at = now() where id = %s",
        [wa_id, message_id],
    )


def status_of(conn, message_id: uuid.UUID) -> str:
    return conn.execute("select status::text from messages where id = %s", [message_id]).fetchone()[
        0
    ]


# --- Attachments ----------------------------------------------------------------------------


def test_a_document_with_an_empty_caption_is_queued_with_what_the_poller_needs(conn, world):
    row = send_as(
        conn, "employee", world, G1, None, attachment_bucket="claims",
        attachment_path="2026/policy.pdf",
    )  # fmt: skip
    assert row["status"] == "pending" and row["content"] == ""
    assert (
        row["attachment_bucket"],
        row["attachment_path"],
        row["attachment_kind"],
        row["attachment_mime_type"],
        row["attachment_size"],
        row["attachment_file_name"],
    ) == ("claims", "2026/policy.pdf", "document", "application/pdf", 2 * MB, "policy.pdf")
    assert jobs(conn) == [(str(row["id"]), G1)]


@pytest.mark.parametrize(
    ("path", "kind", "mime"),
    [
        ("2026/photo.jpg", "image", "image/jpeg"),
        ("2026/scan.png", "image", "image/png"),
        ("2026/video.mp4", "document", "video/mp4"),
    ],
)
def test_the_kind_follows_the_type(conn, world, path, kind, mime):
    row = send_as(
        conn, "employee", world, G1, "Hasar fotoğrafı", attachment_bucket="claims",
        attachment_path=path,
    )  # fmt: skip
    assert (row["attachment_kind"], row["attachment_mime_type"], row["content"]) == (
        kind,
        mime,
        "Hasar fotoğrafı",
    )


ATTACHMENT_REFUSALS = [
    # (persona, bucket, path, SQLSTATE, message start)
    ("employee", "claims", "sales/offer.pdf", "PT404", "attachment not found"),  # not theirs
    ("employee", "claims", "2026/missing.pdf", "PT404", "attachment not found"),
    ("employee", "other", "2026/policy.pdf", "PT404", "attachment not found"),
    ("employee", "claims", "quarantine/virus.pdf", "PT404", "attachment not found"),  # restrictive
    ("admin", "claims", "quarantine/virus.pdf", "PT404", "attachment not found"),
    ("employee", "claims", "2026/uploading.pdf", "PT404", "attachment not found"),  # no size yet
    ("other_employee", "claims", "2026/policy.pdf", "PT403", "group"),  # the group comes first
    ("employee", "claims", "2026/big.png", "PT413", "attachment is too big for a WhatsApp image"),
    (
        "employee",
        "claims",
        "2026/huge.pdf",
        "PT413",
        "attachment is too big for a WhatsApp document",
    ),
    ("employee", "claims", "2026/untyped", "PT415", "attachment type not allowed"),
    ("employee", "claims", "2026/odd", "PT415", "attachment type not allowed"),
    ("employee", "claims", None, "22023", "attachment_bucket and attachment_path go together"),
    ("employee", None, "2026/policy.pdf", "22023", "attachment_bucket and attachment_path go"),
]


@pytest.mark.parametrize(("persona", "bucket", "path", "sqlstate", "message"), ATTACHMENT_REFUSALS)
def test_attachment_refusals(conn, world, persona, bucket, path, sqlstate, message):
    before = counts(conn)
    error = refusal(
        lambda: send_as(
            conn, persona, world, G1, "ek", attachment_bucket=bucket, attachment_path=path
        )
    )
    assert (error.sqlstate, error.diag.message_primary[: len(message)]) == (sqlstate, message)
    assert error.diag.message_hint
    assert counts(conn) == before


def test_an_object_one_may_not_read_is_answered_as_a_missing_one(conn, world):
    def answer(path: str) -> tuple:
        error = refusal(
            lambda: send_as(
                conn, "employee", world, G1, "ek", attachment_bucket="claims", attachment_path=path
            )
        )
        return error.sqlstate, error.diag.message_primary.replace(path, "<path>")

    assert answer("sales/offer.pdf") == answer("sales/nothing.pdf")


def test_an_admin_reads_every_object_through_the_policies(conn, world):
    row = send_as(
        conn, "admin", world, G2, "Teklif", attachment_bucket="claims",
        attachment_path="sales/offer.pdf",
    )  # fmt: skip
    assert row["attachment_file_name"] == "offer.pdf"


def test_without_a_policy_nobody_reads_an_object(conn, world):
    conn.execute('drop policy "Users can read their own claim files" on storage.objects')
    error = refusal(
        lambda: send_as(
            conn,
            "employee",
            world,
            G1,
            "ek",
            attachment_bucket="claims",
            attachment_path="2026/policy.pdf",
        )
    )
    assert error.sqlstate == "PT404"


def test_calling_the_body_directly_does_not_skip_the_storage_check(conn, world):
    """The check is in the SECURITY DEFINER body, evaluated for the caller's role: a signed-in
    user calling private.send_message with SQL meets the same refusal."""
    with pytest.raises(psycopg.Error) as caught, acting_as(conn, "employee", world):
        conn.execute(
            "select private.send_message(%s, 'x', null, 'claims', 'sales/offer.pdf', null, null, "
            "null)",
            [G1],
        )
    assert caught.value.sqlstate == "PT404"


def test_a_caption_may_not_be_empty_without_an_attachment_and_the_table_says_so_too(conn, world):
    assert refusal(lambda: send_as(conn, "employee", world, G1, "")).sqlstate == "22004"
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into messages (group_jid, content) values (%s, '')", [G1])
    with pytest.raises(psycopg.errors.CheckViolation):  # an attachment is all or nothing
        conn.execute(
            "insert into messages (group_jid, content, attachment_bucket, attachment_path) "
            "values (%s, '', 'claims', 'x.pdf')",
            [G1],
        )


# --- Replies --------------------------------------------------------------------------------


def test_a_reply_quotes_a_sent_message_of_the_group(conn, world):
    first = send_as(conn, "employee", world, G1, "Dosyanız açıldı")
    mark_sent(conn, first["id"], "3EB0FIRST")
    reply = send_as(conn, "employee", world, G1, "Ekspertiz yarın", reply_to=first["id"])
    assert reply["reply_to"] == first["id"] and reply["status"] == "pending"


def test_reply_refusals(conn, world):
    unsent = send_as(conn, "employee", world, G1, "henüz gitmedi")
    elsewhere = send_as(conn, "other_employee", world, G2, "satış")
    mark_sent(conn, elsewhere["id"], "3EB0SALES")
    before = counts(conn)
    cases = [
        ("employee", uuid.uuid4(), "PT404", "reply_to message not found"),
        # A message of a group the employee cannot read: as unknown.
        ("employee", elsewhere["id"], "PT404", "reply_to message not found"),
        # An admin reads it: told it is another group's.
        ("admin", elsewhere["id"], "PT422", f"reply_to message {elsewhere['id']} belongs"),
        ("employee", unsent["id"], "PT425", f"reply_to message {unsent['id']} has not been sent"),
    ]
    for persona, reply_to, sqlstate, message in cases:
        error = refusal(lambda p=persona, r=reply_to: send_as(conn, p, world, G1, "r", reply_to=r))
        assert error.sqlstate == sqlstate, (persona, error)
        assert error.diag.message_primary.startswith(message)
    assert counts(conn) == before


# --- Mentions -------------------------------------------------------------------------------


def test_mentions_are_resolved_to_participants_in_order_once_each(conn, world):
    row = send_as(
        conn, "employee", world, G1, "@905552222222 @905551111111",
        mentions=[
            "905552222222@s.whatsapp.net",  # LID-addressed: its jid is its LID
            "111111111111111@lid",  # Ali by LID
            "905551111111@s.whatsapp.net",  # Ali again, by phone
        ],
    )  # fmt: skip
    assert row["mentions"] == [
        {"jid": "905552222222@s.whatsapp.net", "lid": "222222222222222@lid"},
        {"jid": "905551111111@s.whatsapp.net", "lid": "111111111111111@lid"},
    ]


def test_everyone_and_no_mentions(conn, world):
    assert send_as(conn, "employee", world, G1, "Duyuru", mentions=["everyone"])["mentions"] == {
        "everyone": True
    }
    assert send_as(conn, "employee", world, G1, "Düz", mentions=[])["mentions"] is None


@pytest.mark.parametrize(
    ("mentions", "sqlstate", "message"),
    [
        (
            ["905551111111@s.whatsapp.net", "905559999999@s.whatsapp.net", "333@lid"],
            "PT422",
            f"not participants of group {G1}: 905559999999@s.whatsapp.net, 333@lid",
        ),
        (["905551111111"], "22023", "invalid mention: 905551111111"),
        (["120363000000000001@g.us"], "22023", "invalid mention: 120363000000000001@g.us"),
        ([None], "22023", "invalid mention: null"),
        (["everyone", "905551111111@s.whatsapp.net"], "22023", "mentions: 'everyone' goes alone"),
    ],
)
def test_mention_refusals(conn, world, mentions, sqlstate, message):
    before = counts(conn)
    error = refusal(lambda: send_as(conn, "employee", world, G1, "@x", mentions=mentions))
    assert (error.sqlstate, error.diag.message_primary) == (sqlstate, message)
    assert counts(conn) == before


# --- Scheduled sends ------------------------------------------------------------------------


def future(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def test_a_scheduled_message_waits_out_of_the_queue(conn, world):
    row = send_as(conn, "employee", world, G1, "Hatırlatma", send_at=future(60))
    assert row["status"] == "scheduled" and row["send_at"] is not None
    assert jobs(conn) == []
    assert take(conn, world) == []
    assert status_of(conn, row["id"]) == "scheduled"


@pytest.mark.parametrize(
    ("delta", "sqlstate", "message"),
    [
        (timedelta(minutes=-1), "PT422", "send_at is not in the future"),
        (timedelta(0), "PT422", "send_at is not in the future"),
        (timedelta(days=30, minutes=1), "PT416", "send_at is more than 30 days ahead"),
    ],
)
def test_send_at_refusals(conn, world, delta, sqlstate, message):
    before = counts(conn)
    send_at = datetime.now(UTC) + delta
    error = refusal(lambda: send_as(conn, "employee", world, G1, "r", send_at=send_at))
    assert error.sqlstate == sqlstate
    assert error.diag.message_primary.startswith(message)
    assert counts(conn) == before


def test_thirty_days_ahead_is_accepted(conn, world):
    row = send_as(conn, "employee", world, G1, "Yenileme", send_at=future(30 * 24 * 60 - 1))
    assert row["status"] == "scheduled"


def fall_due(conn, message_id: uuid.UUID, seconds_ago: float) -> None:
    """Move a scheduled message's send_at into the past (the test cannot wait for it)."""
    for table, key in (("messages", "id"), ("private.scheduled_messages", "message_id")):
        conn.execute(
            f"update {table} set send_at = now() - make_interval(secs => %s) where {key} = %s",
            [seconds_ago, message_id],
        )


def test_due_messages_are_queued_by_the_take_in_the_order_they_fell_due(conn, world):
    """Two groups; in G1 the later-written message falls due first; a message sent at once
    after they fell due goes behind them; one not yet due stays out."""
    b = send_as(conn, "employee", world, G1, "b", send_at=future(10))
    a = send_as(conn, "employee", world, G1, "a", send_at=future(20))
    c = send_as(conn, "other_employee", world, G2, "c", send_at=future(30))
    later = send_as(conn, "employee", world, G1, "later", send_at=future(40))
    fall_due(conn, a["id"], 30)
    fall_due(conn, b["id"], 20)
    fall_due(conn, c["id"], 25)
    now = send_as(conn, "employee", world, G1, "now")  # promotes G1's due ones first
    assert jobs(conn) == [(str(a["id"]), G1), (str(b["id"]), G1), (str(now["id"]), G1)]
    taken = take(conn, world)
    assert jobs(conn)[-1] == (str(c["id"]), G2)  # the take promoted G2's
    by_group: dict[str, list[str]] = {}
    for job in taken:
        by_group.setdefault(job["group_jid"], []).append(job["content"])
    assert by_group == {G1: ["a", "b", "now"], G2: ["c"]}
    assert status_of(conn, later["id"]) == "scheduled"
    assert {status_of(conn, m["id"]) for m in (a, b, c, now)} == {"sending"}


def test_a_scheduled_message_never_holds_back_an_immediate_one(conn, world):
    send_as(conn, "employee", world, G1, "yarın", send_at=future(24 * 60))
    now = send_as(conn, "employee", world, G1, "şimdi")
    assert [j["message_id"] for j in take(conn, world)] == [now["id"]]


def test_the_ttl_counts_from_send_at(conn, world):
    """Written two days ago, due ten seconds ago: it has its whole TTL. Due two hours ago
    with nobody taking messages: it expires at promotion, without a job."""
    fresh = send_as(conn, "employee", world, G1, "taze", send_at=future(60))
    stale = send_as(conn, "employee", world, G1, "bayat", send_at=future(60))
    conn.execute(
        "update messages set created_at = now() - interval '2 days' where id = any(%s)",
        [[fresh["id"], stale["id"]]],
    )
    fall_due(conn, fresh["id"], 10)
    fall_due(conn, stale["id"], 7200)
    assert [j["message_id"] for j in take(conn, world, ttl=3600)] == [fresh["id"]]
    assert conn.execute(
        "select status::text, error_log like 'expired:%%' from messages where id = %s",
        [stale["id"]],
    ).fetchone() == ("failed", True)
    assert str(stale["id"]) not in {m for m, _ in jobs(conn)}


def test_a_promoted_message_past_its_ttl_in_the_queue_expires_from_send_at(conn, world):
    row = send_as(conn, "employee", world, G1, "kuyrukta", send_at=future(60))
    fall_due(conn, row["id"], 100)
    send_as(conn, "employee", world, G1, "tetik")  # promotes it
    conn.execute("update messages set created_at = now() where id = %s", [row["id"]])
    # created just now, but due 100 s ago: a TTL of 50 s has passed.
    taken = take(conn, world, ttl=50)
    assert row["id"] not in [j["message_id"] for j in taken]
    assert status_of(conn, row["id"]) == "failed"


def test_statuses_around_scheduled_only_move_as_designed(conn, world):
    row = send_as(conn, "employee", world, G1, "plan", send_at=future(60))
    for status in ("sending", "sent", "delivered", "read"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("update messages set status = %s where id = %s", [status, row["id"]])
    cancel_as(conn, "employee", world, row["id"])
    for status in ("scheduled", "pending", "failed"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("update messages set status = %s where id = %s", [status, row["id"]])
    sent = send_as(conn, "employee", world, G1, "gitti")
    mark_sent(conn, sent["id"], "3EB0X")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update messages set status = 'scheduled' where id = %s", [sent["id"]])


# --- cancel_message -------------------------------------------------------------------------


def test_the_sender_or_an_admin_cancels_a_scheduled_message(conn, world):
    mine = send_as(conn, "employee", world, G1, "iptal", send_at=future(60))
    canceled = cancel_as(conn, "employee", world, mine["id"])
    assert canceled["status"] == "canceled"
    assert canceled["error_log"] == "canceled by employee@agency.test"
    theirs = send_as(conn, "employee", world, G1, "iptal 2", send_at=future(60))
    assert cancel_as(conn, "admin", world, theirs["id"])["status"] == "canceled"
    # Canceled messages never go, even once due.
    fall_due(conn, mine["id"], 10)
    assert take(conn, world) == [] and jobs(conn) == []


def test_cancel_refusals(conn, world):
    scheduled = send_as(conn, "employee", world, G1, "plan", send_at=future(60))
    queued = send_as(conn, "employee", world, G1, "kuyruk")
    admins = send_as(conn, "admin", world, G1, "yönetici", send_at=future(60))
    cases = [
        ("other_employee", scheduled["id"], "PT404", "message not found"),
        ("employee", admins["id"], "PT404", "message not found"),  # same team, not the sender
        ("employee", uuid.uuid4(), "PT404", "message not found"),
        ("employee", queued["id"], "PT409", f"message {queued['id']} is not scheduled: it is "),
        ("admin", world.m2, "PT409", "message"),
    ]
    for persona, message_id, sqlstate, message in cases:
        error = refusal(lambda p=persona, m=message_id: cancel_as(conn, p, world, m))
        assert (error.sqlstate, error.diag.message_primary[: len(message)]) == (sqlstate, message)
    assert status_of(conn, scheduled["id"]) == "scheduled"
    assert status_of(conn, admins["id"]) == "scheduled"
    cancel_as(conn, "employee", world, scheduled["id"])
    again = refusal(lambda: cancel_as(conn, "employee", world, scheduled["id"]))
    assert again.sqlstate == "PT409" and "canceled" in again.diag.message_primary


def test_cancel_and_promotion_are_broadcast_as_status_changes(conn, world):
    conn.execute("delete from realtime.messages")
    row = send_as(conn, "employee", world, G1, "yayın", send_at=future(60))
    other = send_as(conn, "employee", world, G1, "yayın 2", send_at=future(60))
    cancel_as(conn, "employee", world, row["id"])
    fall_due(conn, other["id"], 1)
    take(conn, world)
    statuses = [
        (r[0], r[1])
        for r in conn.execute(
            "select payload ->> 'message_id', payload ->> 'status' from realtime.messages "
            "where event = 'message_status' order by inserted_at, payload ->> 'status' desc"
        )
    ]
    assert (str(row["id"]), "canceled") in statuses
    assert (str(other["id"]), "pending") in statuses


# --- send_to_groups -------------------------------------------------------------------------


def test_fan_out_writes_one_row_and_one_job_per_group_with_a_shared_batch(conn, world):
    groups = [G2, G1, G_UNASSIGNED]
    rows = send_to_groups_as(conn, "admin", world, groups, "Yeni poliçe koşulları")
    assert [r["group_jid"] for r in rows] == groups
    assert len({r["batch_id"] for r in rows}) == 1 and rows[0]["batch_id"] is not None
    assert {r["status"] for r in rows} == {"pending"}
    assert {r["client_msg_id"] for r in rows} == {None}
    assert jobs(conn) == [(str(r["id"]), r["group_jid"]) for r in rows]


def test_fan_out_is_all_or_nothing_and_lists_every_refused_group(conn, world):
    before = counts(conn)
    groups = [G1, G2, G_INACTIVE, G_READONLY, UNKNOWN]
    error = refusal(lambda: send_to_groups_as(conn, "employee", world, groups, "hepsine"))
    assert error.sqlstate == "PT424"
    assert error.diag.message_primary.startswith("cannot send to 4 of 5 groups: ")
    unassigned = "is not assigned to any of your teams"
    assert json.loads(error.diag.message_detail) == [
        {"group_jid": G2, "code": "PT403", "message": f"group {G2} {unassigned}"},
        {"group_jid": G_INACTIVE, "code": "PT410", "message": f"group {G_INACTIVE} is inactive"},
        {
            "group_jid": G_READONLY,
            "code": "PT409",
            "message": f"group {G_READONLY} is read-only: announce-only and we are not an admin",
        },
        {"group_jid": UNKNOWN, "code": "PT403", "message": f"group {UNKNOWN} {unassigned}"},
    ]
    assert counts(conn) == before


def test_fan_out_counts_the_group_quota_among_the_refusals(conn, world):
    with acting_as(conn, "admin", world, commit=True):
        conn.execute("update send_limits set group_pending = 1")
    send_as(conn, "admin", world, G2, "bekleyen")
    error = refusal(lambda: send_to_groups_as(conn, "admin", world, [G1, G2], "iki"))
    assert error.sqlstate == "PT424"
    assert [e["code"] for e in json.loads(error.diag.message_detail)] == ["PT429"]


def test_fan_out_with_a_key_is_idempotent(conn, world):
    key = uuid.uuid4()
    first = send_to_groups_as(conn, "admin", world, [G1, G2], "tekrar", key)
    before = counts(conn)
    again = send_to_groups_as(conn, "admin", world, [G1, G2], "tekrar", key)
    assert [r["id"] for r in again] == [r["id"] for r in first]
    assert counts(conn) == before
    # The same key from another sender is another batch.
    theirs = send_to_groups_as(conn, "employee", world, [G1], "tekrar", key)
    assert theirs[0]["batch_id"] != first[0]["batch_id"]
    for groups, content in (
        ([G1], "tekrar"),
        ([G1, G2], "başka"),
        ([G2, G1, G_UNASSIGNED], "tekrar"),
    ):
        error = refusal(
            lambda g=groups, c=content: send_to_groups_as(conn, "admin", world, g, c, key)
        )
        assert error.sqlstate == "PT422"
    # One key, one message: not also a single send (either way round).
    assert refusal(lambda: send_as(conn, "admin", world, G1, "tekrar", key)).sqlstate == "PT422"
    single = uuid.uuid4()
    send_as(conn, "admin", world, G1, "tek", single)
    error = refusal(lambda: send_to_groups_as(conn, "admin", world, [G1], "tek", single))
    assert error.sqlstate == "PT422"
    assert counts(conn) == (before[0] + 2, before[1] + 2)


@pytest.mark.parametrize(
    ("groups", "sqlstate", "message"),
    [
        (None, "22023", "group_jids is empty"),
        ([], "22023", "group_jids is empty"),
        ([G1, "hasar-takip"], "22023", "invalid group_jid: hasar-takip"),
        ([G1, None], "22023", "invalid group_jid: null"),
        ([G1, G1], "22023", f"group {G1} is listed twice"),
        ([f"120363{n:012d}@g.us" for n in range(257)], "PT413", "too many groups: 257"),
    ],
)
def test_fan_out_input_refusals(conn, world, groups, sqlstate, message):
    before = counts(conn)
    error = refusal(lambda: send_to_groups_as(conn, "admin", world, groups, "x"))
    assert error.sqlstate == sqlstate
    assert error.diag.message_primary.startswith(message)
    assert counts(conn) == before


def test_fan_out_of_256_groups_is_accepted(conn, world):
    groups = [f"120363{n:012d}@g.us" for n in range(100, 356)]
    conn.execute(
        "insert into whatsapp_groups (jid, name, session_id) "
        "select g, 'g', %s from unnest(%s::text[]) g",
        [world.session, groups],
    )
    with acting_as(conn, "admin", world, commit=True):
        conn.execute("update send_limits set sender_per_minute = null")
    rows = send_to_groups_as(conn, "admin", world, groups, "herkese")
    assert len(rows) == 256 and len(jobs(conn)) == 256


def test_fan_out_counts_each_row_against_the_per_minute_quota(conn, world):
    with acting_as(conn, "admin", world, commit=True):
        conn.execute("update send_limits set sender_per_minute = 2")
    error = refusal(lambda: send_to_groups_as(conn, "admin", world, [G1, G2, G_UNASSIGNED], "üç"))
    assert error.sqlstate == "PT429"
    assert len(send_to_groups_as(conn, "admin", world, [G1, G2], "iki")) == 2
    assert refusal(lambda: send_as(conn, "admin", world, G1, "bir")).sqlstate == "PT429"


def test_fan_out_with_an_attachment_scheduled(conn, world):
    rows = send_to_groups_as(
        conn, "admin", world, [G1, G2], None, attachment_bucket="claims",
        attachment_path="2026/photo.jpg", send_at=future(60),
    )  # fmt: skip
    assert {(r["status"], r["attachment_kind"], r["content"]) for r in rows} == {
        ("scheduled", "image", "")
    }
    assert jobs(conn) == []
    error = refusal(
        lambda: send_to_groups_as(
            conn,
            "employee",
            world,
            [G1],
            "x",
            attachment_bucket="claims",
            attachment_path="sales/offer.pdf",
        )
    )
    assert error.sqlstate == "PT404"


# --- The job's details ----------------------------------------------------------------------


def test_the_take_returns_the_details_the_poller_needs(conn, world):
    quoted = send_as(
        conn, "employee", world, G1, "Poliçe", attachment_bucket="claims",
        attachment_path="2026/policy.pdf",
    )  # fmt: skip
    take(conn, world)
    conn.execute(
        "update messages set status = 'sent', wa_message_id = '3EB0POLICY' where id = %s",
        [quoted["id"]],
    )
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    plain = send_as(conn, "employee", world, G1, "düz")
    rich = send_as(
        conn, "employee", world, G1, "@905552222222 fotoğraf", attachment_bucket="claims",
        attachment_path="2026/photo.jpg", reply_to=quoted["id"],
        mentions=["905552222222@s.whatsapp.net"],
    )  # fmt: skip
    everyone = send_as(conn, "employee", world, G1, "herkes", mentions=["everyone"])
    taken = {j["message_id"]: j for j in take(conn, world)}
    assert list(taken[plain["id"]]) == [
        "msg_id",
        "message_id",
        "group_jid",
        "session_id",
        "content",
        "attempts",
        "details",
    ]
    assert taken[plain["id"]]["details"] is None
    assert taken[rich["id"]]["details"] == {
        "attachment": {
            "bucket": "claims",
            "path": "2026/photo.jpg",
            "kind": "image",
            "mime_type": "image/jpeg",
            "size": MB,
            "file_name": "photo.jpg",
        },
        "reply_to": {
            "message_id": str(quoted["id"]),
            "wa_message_id": "3EB0POLICY",
            "content": "Poliçe",
            "attachment_kind": "document",
            "sender": "905550000001@s.whatsapp.net",
            "sender_lid": "900000000000001@lid",
        },
        "mentions": [{"jid": "905552222222@s.whatsapp.net", "lid": "222222222222222@lid"}],
    }
    assert taken[everyone["id"]]["details"] == {"mentions": {"everyone": True}}


# --- Who may call what ----------------------------------------------------------------------


def test_the_new_columns_are_read_as_the_rows_are(conn, world):
    """No new table: the message row's RLS covers the new columns (its team reads them)."""
    send_as(conn, "employee", world, G1, "plan", send_at=future(60), mentions=["everyone"])
    with acting_as(conn, "employee", world):
        assert (
            conn.execute(
                "select count(*) from messages where send_at is not null and mentions is not null"
            ).fetchone()[0]
            == 1
        )
    with acting_as(conn, "other_employee", world):
        assert (
            conn.execute("select count(*) from messages where send_at is not null").fetchone()[0]
            == 0
        )
    for column in ("send_at", "attachment_path", "mentions", "batch_id", "reply_to"):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            acting_as(conn, "wa_poller", world),
        ):
            conn.execute(f"update messages set {column} = null")


def test_racing_fan_outs_with_one_key_make_one_batch(db_url, conn, world):
    key = uuid.uuid4()
    callers = 20
    barrier = threading.Barrier(callers)
    batches: list[list[uuid.UUID]] = []
    errors: list[BaseException] = []
    claims = json.dumps(world.claims("admin"))

    def call() -> None:
        try:
            with psycopg.connect(db_url) as c:  # one transaction, committed on exit
                c.execute("set local role authenticated")
                c.execute("select set_config('request.jwt.claims', %s, true)", [claims])
                barrier.wait(timeout=60)
                rows = c.execute(
                    "select id from send_to_groups(%s, 'yarış', %s)", [[G1, G2], key]
                ).fetchall()
                batches.append([r[0] for r in rows])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(batches) == callers and len({tuple(b) for b in batches}) == 1
    assert counts(conn)[1] == 2  # one job per group


def test_a_cancel_and_a_promotion_of_the_same_message_never_both_win(db_url, conn, world):
    """The cancel holds the row: the take skips it (and queues nothing), then it is canceled."""
    row = send_as(conn, "employee", world, G1, "yarış", send_at=future(60))
    fall_due(conn, row["id"], 1)
    with psycopg.connect(db_url) as canceler:
        canceler.execute("set local role authenticated")
        canceler.execute(
            "select set_config('request.jwt.claims', %s, true)",
            [json.dumps(world.claims("employee"))],
        )
        canceler.execute("select cancel_message(%s)", [row["id"]])
        assert take(conn, world) == []  # not waiting: skipped
        canceler.commit()
    assert status_of(conn, row["id"]) == "canceled"
    assert take(conn, world) == [] and jobs(conn) == []


def test_quotas_count_at_the_call(conn, world):
    """The per-minute quota counts a scheduled message when it is written; the group quota
    counts what waits in the queue, so a scheduled one counts once it falls due. (The seed's
    message in G1 is the employee's, written just now.)"""
    with acting_as(conn, "admin", world, commit=True):
        conn.execute("update send_limits set sender_per_minute = 3, group_pending = 1")
    send_as(conn, "employee", world, G1, "plan 1", send_at=future(60))
    send_as(conn, "employee", world, G1, "şimdi")  # the group's one waiting message
    assert refusal(lambda: send_as(conn, "employee", world, G1, "üçüncü")).sqlstate == "PT429"
    with acting_as(conn, "admin", world, commit=True):
        conn.execute("update send_limits set sender_per_minute = 10")
    send_as(conn, "employee", world, G1, "plan 2", send_at=future(60))  # not waiting: accepted
    error = refusal(lambda: send_as(conn, "employee", world, G1, "yine şimdi"))
    assert error.sqlstate == "PT429" and "waiting" in error.diag.message_primary


def test_policies_for_public_and_for_all_commands_apply_too(conn, world):
    conn.execute('drop policy "Users can read their own claim files" on storage.objects')
    conn.execute(
        'create policy "Everyone can manage the 2026 folder" on storage.objects for all '
        "to public using (name like '2026/%')"
    )
    row = send_as(
        conn, "other_employee", world, G2, "ek", attachment_bucket="claims",
        attachment_path="2026/policy.pdf",
    )  # fmt: skip
    assert row["attachment_kind"] == "document"
    # The restrictive policy still applies.
    conn.execute(
        "update storage.objects set name = 'quarantine/policy.pdf' where name = '2026/policy.pdf'"
    )
    conn.execute(
        'create policy "Everyone can read quarantine names" on storage.objects for select '
        "to public using (true)"
    )
    error = refusal(
        lambda: send_as(
            conn,
            "other_employee",
            world,
            G2,
            "ek",
            attachment_bucket="claims",
            attachment_path="quarantine/policy.pdf",
        )
    )
    assert error.sqlstate == "PT404"


def test_a_retry_returns_its_rows_after_a_group_turned_read_only(conn, world):
    key = uuid.uuid4()
    first = send_to_groups_as(conn, "admin", world, [G1, G2], "duyuru", key)
    conn.execute(
        "update whatsapp_groups set is_readonly = true, readonly_reason = 'announce-only' "
        "where jid = %s",
        [G2],
    )
    again = send_to_groups_as(conn, "admin", world, [G1, G2], "duyuru", key)
    assert [r["id"] for r in again] == [r["id"] for r in first]
    single = uuid.uuid4()
    row = send_as(conn, "employee", world, G1, "ek", single, attachment_bucket="claims",
                  attachment_path="2026/photo.jpg")  # fmt: skip
    conn.execute("delete from storage.objects where name = '2026/photo.jpg'")
    again_single = send_as(
        conn, "employee", world, G1, "ek", single, attachment_bucket="claims",
        attachment_path="2026/photo.jpg",
    )  # fmt: skip
    assert again_single["id"] == row["id"]


def test_the_seeds_claims_bucket_lets_a_team_send_its_groups_files(conn, postgres_conn):
    """supabase/seed.sql (applied as `postgres`, as `db reset` does) files each group's
    attachments under its JID; the teams of the group read them, the others do not."""
    from poller.resources import PROJECT_ROOT

    postgres_conn.execute((PROJECT_ROOT / "supabase" / "seed.sql").read_text())
    employee = uuid.UUID("00000000-0000-4000-8000-00000000e001")
    conn.execute(
        "insert into storage.objects (bucket_id, name, metadata) values "
        "('claims', '120363000000000101@g.us/police.pdf', "
        '\'{"size": 1000, "mimetype": "application/pdf"}\')'
    )
    claims = {"sub": str(employee), "role": "authenticated", "app_metadata": {}}

    def send(group: str, path: str) -> str:
        with conn.transaction(force_rollback=True):
            conn.execute("set local role authenticated")
            conn.execute("select set_config('request.jwt.claims', %s, true)", [json.dumps(claims)])
            try:
                conn.execute(
                    "select send_message(%s, 'Poliçeniz', attachment_bucket => 'claims', "
                    "attachment_path => %s)",
                    [group, path],
                )
                return "ok"
            except psycopg.Error as error:
                return error.sqlstate

    assert send("120363000000000101@g.us", "120363000000000101@g.us/police.pdf") == "ok"
    conn.execute("delete from group_assignments where group_jid = '120363000000000101@g.us'")
    assert send("120363000000000102@g.us", "120363000000000101@g.us/police.pdf") == "PT404"


def test_the_schedule_holds_exactly_the_scheduled_messages_out_of_the_apis_reach(conn, world):
    kept = send_as(conn, "employee", world, G1, "kalır", send_at=future(60))
    canceled = send_as(conn, "employee", world, G1, "iptal", send_at=future(60))
    due = send_to_groups_as(conn, "admin", world, [G1, G2], "zamanı geldi", send_at=future(60))
    cancel_as(conn, "employee", world, canceled["id"])
    for row in due:
        fall_due(conn, row["id"], 1)
    take(conn, world)
    schedule = conn.execute("select message_id from private.scheduled_messages").fetchall()
    assert schedule == [(kept["id"],)]
    assert (
        conn.execute(
            "select message_id from private.scheduled_messages s "
            "join messages m on m.id = s.message_id where m.status <> 'scheduled'"
        ).fetchall()
        == []
    )
    for role in ("anon", "authenticated", "service_role", "wa_poller"):
        for privilege in ("select", "insert", "update", "delete"):
            assert not conn.execute(
                "select has_table_privilege(%s, 'private.scheduled_messages', %s)",
                [role, privilege],
            ).fetchone()[0], (role, privilege)
