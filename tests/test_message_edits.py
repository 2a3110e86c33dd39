"""Edit and delete (edit_message, revoke_message): who may, WhatsApp's windows, each refusal with
its SQLSTATE and nothing written, the audit rows, the group's order on the queue, the poller's
transitions moving the action's row and never the message's status; end to end through a real
`wa-poller run` on the simulated WhatsApp (in-process and in a session worker); and the neonize
protobufs, built by neonize's own edit_message and revoke_message up to the network.

    python -m tests.test_message_edits neonize   # the child: prints what it sent, as JSON
"""

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.personas import G1, G2, Seed, acting_as, send_as
from tests.poller_support import Poller, make_team, wait_until
from tests.test_rich_messages import take
from tests.test_rich_sends import as_employee, send, sends_of, wait_sent

WA_ID = "3EB0FIRSTSENT"


@pytest.fixture
def world(conn, data: Seed) -> Seed:
    """The seed with m1 (the employee's, G1) and m2 (the other employee's, G2) sent a moment
    ago, the queue empty, and the session held by 'me' (the take's poller)."""
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute("delete from message_edits")
    conn.execute(
        "update messages set status = 'sent', wa_message_id = %s || left(id::text, 4), "
        "sent_at = now()",
        [WA_ID],
    )
    conn.execute(
        "update whatsapp_sessions set wa_jid = '905550000001@s.whatsapp.net', "
        "lease_owner = 'me', lease_expires_at = now() + interval '1 hour'"
    )
    return data


def call_as(conn, persona: str, s: Seed, sql: str, params: list) -> dict:
    with acting_as(conn, persona, s, commit=True):
        cur = conn.execute(sql, params)
        names = [d.name for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def edit_as(conn, persona: str, s: Seed, message_id: uuid.UUID, content: str | None) -> dict:
    return call_as(conn, persona, s, "select * from edit_message(%s, %s)", [message_id, content])


def revoke_as(conn, persona: str, s: Seed, message_id: uuid.UUID) -> dict:
    return call_as(conn, persona, s, "select * from revoke_message(%s)", [message_id])


def refusal(call) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        call()
    return caught.value


def written(conn) -> tuple[int, int]:
    return (
        conn.execute("select count(*) from message_edits").fetchone()[0],
        conn.execute("select count(*) from pgmq.q_whatsapp_outbound").fetchone()[0],
    )


def as_poller(conn, sql: str, params: list) -> None:
    with conn.transaction():
        conn.execute("set local role wa_poller")
        conn.execute(sql, params).fetchall()


def edit_row(conn, edit_id: uuid.UUID) -> tuple:
    return conn.execute(
        "select status, attempts, error, sent_at is not null from message_edits where id = %s",
        [edit_id],
    ).fetchone()


def message_row(conn, message_id: uuid.UUID) -> tuple:
    return conn.execute(
        "select status::text, content, edited_at is not null, revoked_at is not null "
        "from messages where id = %s",
        [message_id],
    ).fetchone()


def queued(conn) -> list[dict]:
    return [r[0] for r in conn.execute("select message from pgmq.q_whatsapp_outbound order by 1")]


# --- Who may, and the audit row ---------------------------------------------------------------


def test_the_sender_edits_a_sent_message_with_an_audit_row_and_a_job_in_its_group(conn, world):
    edit = edit_as(conn, "employee", world, world.m1, "ilk mesaj, düzeltildi")
    assert {k: edit[k] for k in ("message_id", "group_jid", "kind", "old_content")} == {
        "message_id": world.m1,
        "group_jid": G1,
        "kind": "edit",
        "old_content": "ilk mesaj",
    }
    assert (edit["new_content"], edit["actor_id"], edit["actor_email"]) == (
        "ilk mesaj, düzeltildi",
        world.employee,
        "employee@agency.test",
    )
    assert (edit["status"], edit["attempts"], edit["sent_at"]) == ("pending", 0, None)
    jobs = conn.execute("select message, headers from pgmq.q_whatsapp_outbound").fetchall()
    assert jobs == [
        ({"message_id": str(world.m1), "edit_id": str(edit["id"])}, {"x-pgmq-group": G1})
    ]
    # What the group sees changes when WhatsApp has the edit, not before.
    assert message_row(conn, world.m1) == ("sent", "ilk mesaj", False, False)


def test_an_admin_edits_and_deletes_anyones_message(conn, world):
    edit = edit_as(conn, "admin", world, world.m2, "ikinci")
    revoke = revoke_as(conn, "admin", world, world.m1)
    assert (edit["actor_id"], edit["actor_email"]) == (world.admin, "admin@agency.test")
    assert (revoke["kind"], revoke["old_content"], revoke["new_content"]) == (
        "revoke",
        "ilk mesaj",
        None,
    )
    assert written(conn) == (2, 2)


@pytest.mark.parametrize(
    ("persona", "sqlstate", "message"),
    [
        ("other_employee", "PT404", "message not found: "),
        ("anon", "42501", "permission denied for function"),
        ("service_role", "42501", "not authenticated"),
        ("wa_poller", "42501", "permission denied for function"),
    ],
)
def test_nobody_else_edits_or_deletes(conn, world, persona, sqlstate, message):
    for call in (
        lambda: edit_as(conn, persona, world, world.m1, "x"),
        lambda: revoke_as(conn, persona, world, world.m1),
    ):
        error = refusal(call)
        assert (error.sqlstate, error.diag.message_primary[: len(message)]) == (sqlstate, message)
    assert written(conn) == (0, 0)


def test_a_deleted_user_cannot_edit(conn, world):
    conn.execute("delete from auth.users where id = %s", [world.employee])
    error = refusal(lambda: edit_as(conn, "employee", world, world.m1, "x"))
    assert (error.sqlstate, error.diag.message_primary) == (
        "42501",
        "not authenticated: the user no longer exists",
    )


def test_the_audit_is_read_as_the_messages_are(conn, world):
    edit_as(conn, "employee", world, world.m1, "bir")
    edit_as(conn, "other_employee", world, world.m2, "iki")
    seen = {}
    for persona in ("employee", "other_employee", "admin", "service_role"):
        with acting_as(conn, persona, world):
            seen[persona] = sorted(
                r[0] for r in conn.execute("select new_content from message_edits")
            )
    assert seen == {
        "employee": ["bir"],
        "other_employee": ["iki"],
        "admin": ["bir", "iki"],
        "service_role": ["bir", "iki"],
    }
    for persona in ("anon", "wa_poller"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, persona, world):
            conn.execute("select * from message_edits")


# --- Refusals -------------------------------------------------------------------------------


def test_a_message_never_sent_is_refused(conn, world):
    pending = send_as(conn, "employee", world, G1, "bekliyor")
    failed = conn.execute(
        "insert into messages (group_jid, sender_id, content, status, error_log) "
        "values (%s, %s, 'olmadı', 'failed', 'not a participant') returning id",
        [G1, world.employee],
    ).fetchone()[0]
    before = written(conn)
    for message_id, status in ((pending["id"], "pending"), (failed, "failed")):
        for call in (
            lambda m=message_id: edit_as(conn, "employee", world, m, "x"),
            lambda m=message_id: revoke_as(conn, "employee", world, m),
        ):
            error = refusal(call)
            assert error.sqlstate == "PT425"
            assert (
                error.diag.message_primary
                == f"message {message_id} has not been sent: it is {status}"
            )
    assert written(conn) == before


def test_an_edit_is_refused_past_20_minutes_a_delete_past_60_hours(conn, world):
    conn.execute("update messages set sent_at = now() - interval '20 minutes 1 second'")
    error = refusal(lambda: edit_as(conn, "employee", world, world.m1, "geç"))
    assert error.sqlstate == "PT410"
    assert error.diag.message_primary.startswith(
        f"message {world.m1} was sent too long ago to edit"
    )
    assert error.diag.message_hint == "WhatsApp allows edits for 20 minutes after the send."
    assert written(conn) == (0, 0)
    conn.execute("update messages set sent_at = now() - interval '19 minutes 50 seconds'")
    assert edit_as(conn, "employee", world, world.m1, "yetişti")["status"] == "pending"
    conn.execute("update messages set sent_at = now() - interval '60 hours 1 second'")
    error = refusal(lambda: revoke_as(conn, "employee", world, world.m1))
    assert error.sqlstate == "PT410"
    assert error.diag.message_primary.startswith(
        f"message {world.m1} was sent too long ago to revoke"
    )
    conn.execute("update messages set sent_at = now() - interval '59 hours 59 minutes'")
    assert revoke_as(conn, "employee", world, world.m1)["kind"] == "revoke"


def test_a_deleted_message_can_be_neither_edited_nor_deleted_again(conn, world):
    revoke = revoke_as(conn, "employee", world, world.m1)
    for call in (
        lambda: edit_as(conn, "employee", world, world.m1, "x"),
        lambda: revoke_as(conn, "admin", world, world.m1),
    ):
        error = refusal(call)  # its delete is queued: already as good as deleted
        assert (error.sqlstate, error.diag.message_primary) == (
            "PT409",
            f"message {world.m1} has been deleted",
        )
    # A delete that failed for good leaves the message as it was: it may be tried again.
    conn.execute("update message_edits set status = 'failed' where id = %s", [revoke["id"]])
    assert revoke_as(conn, "employee", world, world.m1)["status"] == "pending"
    conn.execute("update messages set revoked_at = now() where id = %s", [world.m1])
    conn.execute("update message_edits set status = 'failed'")
    assert refusal(lambda: edit_as(conn, "employee", world, world.m1, "x")).sqlstate == "PT409"


@pytest.mark.parametrize(
    ("content", "sqlstate", "message"),
    [
        (None, "22004", "content is empty"),
        (" \u200b\n", "22004", "content is empty"),
        ("x" * 65537, "22001", "content is too long: 65537 characters (at most 65536)"),
    ],
    ids=["null", "blank", "too-long"],
)
def test_edit_content_refusals(conn, world, content, sqlstate, message):
    error = refusal(lambda: edit_as(conn, "employee", world, world.m1, content))
    assert (error.sqlstate, error.diag.message_primary) == (sqlstate, message)
    assert written(conn) == (0, 0)


def test_unknown_message_and_attachment_refusals(conn, world):
    unknown = uuid.uuid4()
    error = refusal(lambda: edit_as(conn, "admin", world, unknown, "x"))
    assert (error.sqlstate, error.diag.message_primary) == (
        "PT404",
        f"message not found: {unknown}",
    )
    conn.execute(
        "update messages set attachment_bucket = 'claims', attachment_path = 'a/b.pdf', "
        "attachment_kind = 'document', attachment_mime_type = 'application/pdf', "
        "attachment_size = 1, attachment_file_name = 'b.pdf' where id = %s",
        [world.m1],
    )
    error = refusal(lambda: edit_as(conn, "employee", world, world.m1, "yeni başlık"))
    assert (error.sqlstate, error.diag.message_primary) == (
        "PT422",
        f"message {world.m1} has an attachment: only a text message can be edited",
    )
    assert revoke_as(conn, "employee", world, world.m1)["kind"] == "revoke"  # that it may


# --- The queue: order, the take's details, the transitions ------------------------------------


def test_an_edit_queued_behind_a_waiting_message_goes_after_it(conn, world):
    waiting = send_as(conn, "employee", world, G1, "önce bu")
    edit = edit_as(conn, "employee", world, world.m1, "sonra bu")
    assert queued(conn) == [
        {"message_id": str(waiting["id"])},
        {"message_id": str(world.m1), "edit_id": str(edit["id"])},
    ]
    # While the message waits out a retry, its group offers nothing: the edit cannot overtake.
    conn.execute(
        "update pgmq.q_whatsapp_outbound set vt = now() + interval '1 minute' "
        "where message ->> 'message_id' = %s",
        [str(waiting["id"])],
    )
    assert take(conn, world) == []
    conn.execute("update pgmq.q_whatsapp_outbound set vt = now()")
    assert [(j["message_id"], j["details"] is None) for j in take(conn, world)] == [
        (waiting["id"], True),
        (world.m1, False),
    ]


def test_the_take_returns_an_edit_and_a_revoke_with_what_the_poller_needs(conn, world):
    edit = edit_as(conn, "employee", world, world.m1, "yeni metin")
    revoke = revoke_as(conn, "admin", world, world.m2)
    wa_ids = dict(conn.execute("select id, wa_message_id from messages").fetchall())
    taken = {j["message_id"]: j for j in take(conn, world)}
    assert {k: taken[world.m1][k] for k in ("group_jid", "content", "attempts", "details")} == {
        "group_jid": G1,
        "content": "yeni metin",
        "attempts": 0,
        "details": {
            "edit": {
                "edit_id": str(edit["id"]),
                "wa_message_id": wa_ids[world.m1],
                "content": "yeni metin",
            }
        },
    }
    assert taken[world.m2]["details"] == {
        "revoke": {
            "edit_id": str(revoke["id"]),
            "wa_message_id": wa_ids[world.m2],
            "sender": "905550000001@s.whatsapp.net",
        }
    }
    assert taken[world.m2]["content"] == "second"
    # The take leaves the messages as they were: sent.
    assert message_row(conn, world.m1)[0] == message_row(conn, world.m2)[0] == "sent"


def test_sent_moves_the_edit_and_the_message_text_and_archives_the_job(conn, world):
    edit = edit_as(conn, "employee", world, world.m1, "yeni metin")
    revoke = revoke_as(conn, "employee", world, world.m1)
    jobs = {j["details"] and next(iter(j["details"])): j for j in take(conn, world)}
    as_poller(
        conn,
        "select private.outbound_sent(%s, %s, %s, array[now(), now()])",
        [
            [world.m1, world.m1],
            [jobs["edit"]["msg_id"], jobs["revoke"]["msg_id"]],
            ["3EB0E", "3EB0R"],
        ],
    )
    assert edit_row(conn, edit["id"]) == ("sent", 1, None, True)
    assert edit_row(conn, revoke["id"]) == ("sent", 1, None, True)
    assert message_row(conn, world.m1) == ("sent", "yeni metin", True, True)
    assert (
        conn.execute("select wa_message_id from messages where id = %s", [world.m1])
        .fetchone()[0]
        .startswith(WA_ID)
    )  # the message keeps its own WhatsApp id
    assert written(conn) == (2, 0)
    archived = conn.execute("select count(*) from pgmq.a_whatsapp_outbound").fetchone()[0]
    assert archived == 2


def test_retry_fail_and_give_back_move_only_the_action(conn, world):
    edit = edit_as(conn, "employee", world, world.m1, "yeni")
    [job] = take(conn, world)
    as_poller(
        conn,
        "select private.outbound_retry(%s, %s, %s, array[0.0])",
        [[world.m1], [job["msg_id"]], ["timeout"]],
    )
    assert edit_row(conn, edit["id"]) == ("pending", 1, "timeout", False)
    [job] = take(conn, world)
    assert job["attempts"] == 1
    as_poller(
        conn,
        "select private.outbound_give_back(%s, %s, array[0.0])",
        [[world.m1], [job["msg_id"]]],
    )
    assert edit_row(conn, edit["id"]) == ("pending", 1, "timeout", False)
    [job] = take(conn, world)
    as_poller(
        conn,
        "select private.outbound_fail(%s, %s, %s)",
        [[world.m1], [job["msg_id"]], ["gave up"]],
    )
    assert edit_row(conn, edit["id"]) == ("failed", 2, "gave up", False)
    assert message_row(conn, world.m1) == ("sent", "ilk mesaj", False, False)
    assert written(conn) == (1, 0)


def test_an_edit_that_waited_past_the_window_fails_at_the_take(conn, world):
    edit = edit_as(conn, "employee", world, world.m1, "yeni")
    conn.execute("update messages set sent_at = now() - interval '21 minutes'")
    assert take(conn, world) == []
    status, attempts, error, _ = edit_row(conn, edit["id"])
    assert (status, attempts) == ("failed", 0)
    assert error.startswith("too late to edit: WhatsApp's window after the send")
    assert written(conn) == (1, 0)


def test_an_action_expires_by_its_own_age(conn, world):
    edit = edit_as(conn, "employee", world, world.m1, "yeni")
    conn.execute("update message_edits set created_at = now() - interval '2 hours'")
    conn.execute("update pgmq.q_whatsapp_outbound set enqueued_at = now() - interval '2 hours'")
    assert take(conn, world, ttl=3600) == []
    status, _, error, _ = edit_row(conn, edit["id"])
    assert (status, error) == (
        "failed",
        "expired: not sent within 3600 s (its WhatsApp session was not connected)",
    )
    assert written(conn) == (1, 0)


def test_a_settled_action_is_archived_by_the_next_take(conn, world):
    edit = edit_as(conn, "employee", world, world.m1, "yeni")
    conn.execute("update message_edits set status = 'failed' where id = %s", [edit["id"]])
    assert take(conn, world) == []
    assert written(conn) == (1, 0)


# --- End to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "1"], ids=["in-process", "session-worker"])
def test_an_edit_and_a_delete_go_out_in_the_groups_order(
    conn, db_url, tmp_path, workers, monkeypatch
):
    monkeypatch.setenv("WA_SESSION_WORKERS", workers)
    team = make_team(conn, groups=1)
    group = next(iter(team.groups))
    conn.execute("update whatsapp_sessions set wa_jid = '905550000000@s.whatsapp.net'")
    poller = Poller(db_url, tmp_path / "first").start()
    try:
        first = send(conn, group, "Poliçeniz hazır.")
        other = send(conn, group, "Yanlış gruba.")
        wait_sent(conn, poller, [first["id"], other["id"]])
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]
    wa_ids = dict(conn.execute("select id, wa_message_id from messages").fetchall())

    # Queued while no poller runs: a new message, then the edit and the delete behind it.
    later = send(conn, group, "Ekspertiz yarın.")
    [edit] = as_employee(
        conn, "select * from edit_message(%(id)s, %(content)s)",
        {"id": first["id"], "content": "Poliçeniz yenilendi."},
    )  # fmt: skip
    [revoke] = as_employee(conn, "select * from revoke_message(%(id)s)", {"id": other["id"]})
    poller = Poller(db_url, tmp_path / "second").start()
    try:
        wait_sent(conn, poller, [later["id"]])
        wait_until(
            lambda: (
                conn.execute("select count(*) from message_edits where status = 'sent'").fetchone()[
                    0
                ]
                == 2
            ),
            30,
            f"the edit and the delete sent\n{poller.output()[-3000:]}",
        )
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]

    sends = poller.sends()
    assert [(s["kind"], s["message_id"]) for s in sends] == [
        ("text", str(later["id"])),
        ("edit", str(first["id"])),
        ("revoke", str(other["id"])),
    ]
    assert {k: sends[1][k] for k in ("edit_id", "target", "content")} == {
        "edit_id": str(edit["id"]),
        "target": wa_ids[first["id"]],
        "content": "Poliçeniz yenilendi.",
    }
    assert {k: sends[2][k] for k in ("edit_id", "target", "sender")} == {
        "edit_id": str(revoke["id"]),
        "target": wa_ids[other["id"]],
        "sender": "905550000000@s.whatsapp.net",
    }
    assert message_row(conn, first["id"])[1:] == ("Poliçeniz yenilendi.", True, False)
    assert message_row(conn, other["id"])[1:] == ("Yanlış gruba.", False, True)
    audit = conn.execute(
        "select kind, old_content, new_content, actor_email, status, attempts "
        "from message_edits order by created_at"
    ).fetchall()
    assert audit == [
        ("edit", "Poliçeniz hazır.", "Poliçeniz yenilendi.", "e2e@agency.test", "sent", 1),
        ("revoke", "Yanlış gruba.", None, "e2e@agency.test", "sent", 1),
    ]
    assert sends_of(poller)[str(later["id"])]["content"] == "Ekspertiz yarın."


def test_an_edit_crosses_the_worker_channel_unchanged():
    from poller.outgoing import OutgoingMessage, outgoing

    details = {
        "revoke": {
            "edit_id": str(uuid.uuid4()),
            "wa_message_id": "3EB0X",
            "sender": "9055@s.whatsapp.net",
        }
    }
    message = outgoing(G2, "eski", uuid.uuid4(), details)
    assert message.amend is not None and message.amend.kind == "revoke"
    assert not message.plain
    assert OutgoingMessage.from_wire(json.loads(json.dumps(message.wire(), default=str))) == message


# -- neonize, up to the network ------------------------------------------------------------


def test_neonize_sends_an_edit_and_a_revoke_with_its_own_builders():
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_message_edits", "neonize"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    [(edit_to, edit), (revoke_to, revoke)] = out["sent"]
    assert edit_to == revoke_to == {"User": "120363000000000001", "Server": "g.us"}
    protocol = edit["editedMessage"]["message"]["protocolMessage"]
    assert protocol.pop("timestampMS")
    assert protocol == {
        "key": {"remoteJID": "120363000000000001@g.us", "fromMe": True, "ID": "3EB0EDITED"},
        "type": "MESSAGE_EDIT",
        "editedMessage": {"conversation": "Poliçeniz yenilendi."},
    }
    assert revoke == {
        "protocolMessage": {
            "key": {"remoteJID": "120363000000000001@g.us", "fromMe": True, "ID": "3EB0REVOKED"},
            "type": "REVOKE",
        }
    }
    assert out["responses"] == ["3EB0SENT", "3EB0SENT"]
    assert out["no_sender"] == "revoke of 3EB0REVOKED: our account's JID is unknown"


def _neonize_child() -> dict:
    """neonize's own NewClient.edit_message / revoke_message / build_revoke on a client that
    stops at send_message; no network."""
    import asyncio

    from google.protobuf.json_format import MessageToDict
    from neonize.client import NewClient
    from neonize.proto.Neonize_pb2 import SendResponse

    from poller.outgoing import Amend, OutgoingMessage
    from poller.transports import neonize_messages as nm
    from poller.transports.base import PermanentSendError

    class Me:
        JID = nm.jid("905550000000@s.whatsapp.net")

    class FakeClient:
        edit_message = NewClient.edit_message
        revoke_message = NewClient.revoke_message
        build_revoke = NewClient.build_revoke

        def __init__(self) -> None:
            self.sent: list = []

        def get_me(self) -> Me:
            return Me()

        def send_message(self, to, message) -> SendResponse:
            self.sent.append(({"User": to.User, "Server": to.Server}, MessageToDict(message)))
            return SendResponse(ID="3EB0SENT", Timestamp=1764612001)

    client = FakeClient()
    group = "120363000000000001@g.us"
    edit = OutgoingMessage(
        group, "Poliçeniz yenilendi.", uuid.uuid4(), amend=Amend("edit", uuid.uuid4(), "3EB0EDITED")
    )
    revoke = OutgoingMessage(
        group, "eski", uuid.uuid4(),
        amend=Amend("revoke", uuid.uuid4(), "3EB0REVOKED", "905550000000@s.whatsapp.net"),
    )  # fmt: skip

    async def call(what: str, function):
        return function()

    async def send_both() -> list[str]:
        cache = nm.MediaCache(lambda a: None)
        return [(await nm.send_outgoing(call, client, m, cache)).ID for m in (edit, revoke)]

    out: dict = {"responses": asyncio.run(send_both()), "sent": client.sent}
    try:
        nm.send_amend(client, group, "", Amend("revoke", uuid.uuid4(), "3EB0REVOKED"))
    except PermanentSendError as exc:
        out["no_sender"] = str(exc)
    return out


if __name__ == "__main__" and sys.argv[1:] == ["neonize"]:
    print(json.dumps(_neonize_child()), flush=True)
    os._exit(0)  # Go's threads must not hold the exit up
