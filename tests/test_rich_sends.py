"""Rich sends end to end: a real `wa-poller run` on the simulated WhatsApp, messages queued through
send_message / send_to_groups as an employee, attachments served by a stand-in Storage
(tests/storage_server.py). And the neonize Message protobufs, built with neonize's own classes up
to the network, in a child process (neonize starts Go's runtime when imported).

    python -m tests.test_rich_sends neonize   # the child: prints what it built, as JSON
"""

import asyncio
import base64
import contextlib
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import pytest

from tests.poller_support import EMPLOYEE, Poller, make_team, wait_until
from tests.storage_server import StorageServer

KEY = "sb_secret_rich_sends_test"  # a secret key: Storage's stand-in takes it as the service key
LID_GROUP_PARTICIPANTS = [  # as whatsmeow lists a LID-addressed group: jid is the LID
    {"jid": "81234567890123@lid", "lid": None, "phone_number": "905551112233@s.whatsapp.net"},
    {"jid": "89876543210987@lid", "lid": None, "phone_number": "905554445566@s.whatsapp.net"},
]
PHONE_GROUP_PARTICIPANTS = [  # a phone-addressed group: jid is the phone JID
    {"jid": "905551112233@s.whatsapp.net", "lid": "81234567890123@lid", "phone_number": None},
    {"jid": "905554445566@s.whatsapp.net", "lid": None, "phone_number": None},
]
SENT = ("sent", "delivered", "read")
MEDIA_KEY, ENC_SHA256, SHA256 = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))


def as_employee(conn, sql: str, params: dict) -> list[dict]:
    """One RPC call as the team's employee, as PostgREST makes it; committed."""
    claims = json.dumps({"sub": str(EMPLOYEE), "role": "authenticated"})
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", [claims])
        cur = conn.execute(sql, params)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def send(conn, group_jid: str, content: str, **options: object) -> dict:
    named = "".join(f", {name} => %({name})s" for name in options)
    sql = f"select * from send_message(%(group_jid)s, %(content)s{named})"
    return as_employee(conn, sql, {"group_jid": group_jid, "content": content, **options})[0]


def send_to_groups(conn, group_jids: list[str], content: str, **options: object) -> list[dict]:
    named = "".join(f", {name} => %({name})s" for name in options)
    sql = f"select * from send_to_groups(%(group_jids)s, %(content)s{named})"
    return as_employee(conn, sql, {"group_jids": group_jids, "content": content, **options})


def wait_sent(conn, poller: Poller, ids: list[uuid.UUID], timeout: float = 30) -> None:
    def done() -> bool:
        rows = conn.execute(
            "select count(*) from messages where id = any(%s) and status::text = any(%s)",
            [ids, list(SENT)],
        ).fetchone()
        return rows[0] == len(ids)

    wait_until(done, timeout, f"{len(ids)} message(s) sent\n{poller.output()[-3000:]}")


def sends_of(poller: Poller) -> dict[str, dict]:
    """The simulated WhatsApp's accepted sends by our message id (presence lines left out)."""
    return {e["message_id"]: e for e in poller.sends() if "message_id" in e}


@pytest.fixture
def storage(conn, tmp_path):
    """A private bucket `claims` that the employee's role may read, served by the stand-in."""
    conn.execute(
        "insert into storage.buckets (id, name, public) values ('claims', 'claims', false)"
    )
    conn.execute(
        "create policy claims_read on storage.objects for select to authenticated "
        "using (bucket_id = 'claims')"
    )
    with StorageServer(tmp_path / "storage", KEY) as server:
        yield server


def put_object(conn, server: StorageServer, path: str, data: bytes, mimetype: str) -> None:
    """A file in Storage: its bytes on the stand-in, its row as Storage records an upload."""
    server.put("claims", path, data)
    metadata = {"size": len(data), "mimetype": mimetype, "eTag": '"x"', "httpStatusCode": 200}
    conn.execute(
        "insert into storage.objects (bucket_id, name, owner_id, metadata) "
        "values ('claims', %s, %s, %s)",
        [path, str(EMPLOYEE), json.dumps(metadata)],
    )


def png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="png")
    return out.getvalue()


def rich_poller(db_url: str, tmp_path, server: StorageServer, **settings: object) -> Poller:
    return Poller(
        db_url, tmp_path / "poller", storage_url=server.url, service_role_key=KEY, **settings
    )


@pytest.mark.parametrize("workers", ["0", "1"], ids=["in-process", "session-worker"])
def test_documents_and_images_go_with_caption_name_and_size_fetched_once_across_a_retry(
    conn, db_url, tmp_path, storage, workers, monkeypatch
):
    monkeypatch.setenv("WA_SESSION_WORKERS", workers)
    team = make_team(conn, groups=1)
    group = next(iter(team.groups))
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 400
    photo = png(640, 480)
    put_object(conn, storage, f"{group}/police-2026.pdf", pdf, "application/pdf")
    put_object(conn, storage, f"{group}/hasar.png", photo, "image/png")
    doc = send(
        conn,
        group,
        "Poliçeniz ekte.",
        attachment_bucket="claims",
        attachment_path=f"{group}/police-2026.pdf",
    )
    image = send(
        conn,
        group,
        "Hasar fotoğrafı",
        attachment_bucket="claims",
        attachment_path=f"{group}/hasar.png",
    )
    poller = rich_poller(db_url, tmp_path, storage, max_attempts=5)
    for message in (doc, image):  # each fails once after its upload: the retry must reuse it
        (poller.control / f"fail-{message['id']}").touch()
    poller.start()
    try:
        wait_sent(conn, poller, [doc["id"], image["id"]])
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]
    sends = sends_of(poller)
    assert len(poller.sends()) == 2  # the failed attempts sent nothing
    assert sends[str(doc["id"])]["kind"] == "document"
    assert sends[str(doc["id"])]["content"] == "Poliçeniz ekte."
    assert sends[str(doc["id"])]["attachment"] == {
        "upload": sends[str(doc["id"])]["attachment"]["upload"],
        "name": "police-2026.pdf",
        "mime_type": "application/pdf",
        "size": len(pdf),
        "sha256": hashlib.sha256(pdf).hexdigest(),
    }
    assert sends[str(image["id"])]["kind"] == "image"
    assert sends[str(image["id"])]["content"] == "Hasar fotoğrafı"
    assert sends[str(image["id"])]["attachment"]["size"] == len(photo)
    assert sorted(unquote(path) for path in storage.requests) == [
        f"/storage/v1/object/authenticated/claims/{group}/hasar.png",
        f"/storage/v1/object/authenticated/claims/{group}/police-2026.pdf",
    ]
    attempts = conn.execute(
        "select attempts from messages where id = any(%s)", [[doc["id"], image["id"]]]
    ).fetchall()
    assert attempts == [(2,), (2,)]


def test_a_missing_object_fails_the_message_for_good(conn, db_url, tmp_path, storage):
    team = make_team(conn, groups=1)
    group = next(iter(team.groups))
    put_object(conn, storage, f"{group}/gone.pdf", b"%PDF-1.7", "application/pdf")
    message = send(
        conn, group, "Ek", attachment_bucket="claims", attachment_path=f"{group}/gone.pdf"
    )
    (storage.root / "claims" / group / "gone.pdf").unlink()  # deleted after it was queued
    poller = rich_poller(db_url, tmp_path, storage).start()
    try:
        wait_until(
            lambda: conn.execute("select status::text from messages").fetchone()[0] == "failed",
            30,
            f"the message to fail\n{poller.output()[-3000:]}",
        )
    finally:
        assert poller.terminate() == 0
    row = conn.execute("select attempts, error_log from messages where id = %s", [message["id"]])
    assert row.fetchone() == (1, f"attachment not found in Storage: claims/{group}/gone.pdf")
    assert poller.sends() == []


def test_a_reply_quotes_the_whatsapp_id_of_the_message_it_answers(conn, db_url, tmp_path):
    team = make_team(conn, groups=1)
    group = next(iter(team.groups))
    conn.execute(
        "update whatsapp_sessions set wa_jid = '905550000000@s.whatsapp.net', "
        "wa_lid = '80000000000001@lid'"
    )
    poller = Poller(db_url, tmp_path).start()
    try:
        first = send(conn, group, "Dosyanız açıldı.")
        wait_sent(conn, poller, [first["id"]])
        reply = send(conn, group, "Eksper yarın geliyor.", reply_to=first["id"])
        wait_sent(conn, poller, [reply["id"]])
    finally:
        assert poller.terminate() == 0
    sends = sends_of(poller)
    quoted = sends[str(first["id"])]["wa_message_id"]
    assert sends[str(reply["id"])]["quoted"] == quoted
    assert sends[str(reply["id"])]["content"] == "Eksper yarın geliyor."
    assert sends[str(first["id"])]["quoted"] is None


def test_mentions_go_by_lid_in_a_lid_addressed_group_and_by_phone_jid_elsewhere(
    conn, db_url, tmp_path
):
    team = make_team(conn, groups=2)
    lid_group, phone_group = team.groups
    for jid, participants in (
        (lid_group, LID_GROUP_PARTICIPANTS),
        (phone_group, PHONE_GROUP_PARTICIPANTS),
    ):
        conn.execute(
            "update whatsapp_groups set participants = %s where jid = %s",
            [json.dumps(participants), jid],
        )
    text = "Sayın @905551112233, evraklarınız hazır."
    by_lid = send(conn, lid_group, text, mentions=["905551112233@s.whatsapp.net"])
    by_phone = send(conn, phone_group, text, mentions=["81234567890123@lid"])
    everyone = send(conn, phone_group, "Herkese duyuru", mentions=["everyone"])
    run = Poller(db_url, tmp_path).start()
    try:
        wait_sent(conn, run, [by_lid["id"], by_phone["id"], everyone["id"]])
    finally:
        assert run.terminate() == 0
    sends = sends_of(run)
    assert sends[str(by_lid["id"])]["mentions"] == ["81234567890123@lid"]
    assert sends[str(by_lid["id"])]["content"] == "Sayın @81234567890123, evraklarınız hazır."
    assert sends[str(by_phone["id"])]["mentions"] == ["905551112233@s.whatsapp.net"]
    assert sends[str(by_phone["id"])]["content"] == text
    assert sends[str(everyone["id"])]["mentions"] == [
        "905551112233@s.whatsapp.net",
        "905554445566@s.whatsapp.net",
    ]


def test_scheduled_messages_go_when_due_not_before_and_in_due_order(conn, db_url, tmp_path):
    team = make_team(conn, groups=1)
    group = next(iter(team.groups))
    now = datetime.now(UTC)
    late = send(conn, group, "ikinci hatırlatma", send_at=now + timedelta(seconds=4))
    early = send(conn, group, "ilk hatırlatma", send_at=now + timedelta(seconds=2.5))
    poller = Poller(db_url, tmp_path).start()
    try:
        at_once = send(conn, group, "hemen")
        wait_sent(conn, poller, [at_once["id"]])
        statuses = dict(conn.execute("select id, status::text from messages").fetchall())
        assert statuses[late["id"]] == statuses[early["id"]] == "scheduled"
        wait_sent(conn, poller, [early["id"], late["id"]])
    finally:
        assert poller.terminate() == 0
    sends = sends_of(poller)
    order = [e["message_id"] for e in poller.sends()]
    assert order == [str(at_once["id"]), str(early["id"]), str(late["id"])]
    for message in (early, late):
        assert sends[str(message["id"])]["t"] >= message["send_at"].timestamp()


def test_a_fan_out_goes_to_every_group_once(conn, db_url, tmp_path, storage):
    team = make_team(conn, groups=4)
    groups = list(team.groups)
    pdf = b"%PDF-1.7 duyuru" * 100
    put_object(conn, storage, "duyuru/bayram.pdf", pdf, "application/pdf")
    rows = send_to_groups(
        conn,
        groups,
        "Bayram süresince ofisimiz kapalıdır.",
        attachment_bucket="claims",
        attachment_path="duyuru/bayram.pdf",
    )
    assert len({r["batch_id"] for r in rows}) == 1
    poller = rich_poller(db_url, tmp_path, storage).start()
    try:
        wait_sent(conn, poller, [r["id"] for r in rows])
    finally:
        assert poller.terminate() == 0
    sends = sends_of(poller)
    assert sorted(e["group"] for e in sends.values()) == sorted(groups)
    assert {e["attachment"]["sha256"] for e in sends.values()} == {hashlib.sha256(pdf).hexdigest()}
    # Fetched for each message (the cache keeps uploads by message), uploaded once for all.
    assert len(storage.requests) == len(groups)
    assert len({e["attachment"]["upload"] for e in sends.values()}) == 1


@pytest.mark.parametrize("workers", ["0", "1"], ids=["in-process", "session-worker"])
def test_typing_is_shown_before_each_send_when_asked(conn, db_url, tmp_path, workers, monkeypatch):
    monkeypatch.setenv("WA_SESSION_WORKERS", workers)
    team = make_team(conn, groups=1)
    group = next(iter(team.groups))
    ids = [send(conn, group, f"mesaj {n}")["id"] for n in range(2)]
    poller = Poller(db_url, tmp_path, typing_ms=300).start()
    try:
        wait_sent(conn, poller, ids)
    finally:
        assert poller.terminate() == 0
    log = poller.sends()
    assert [e.get("presence", e.get("message_id")) for e in log] == [
        "composing",
        str(ids[0]),
        "composing",
        str(ids[1]),
    ]
    for typing, sent in itertools.pairwise(log):
        if "presence" in typing:
            assert typing["group"] == sent["group"] == group
            assert sent["t"] - typing["t"] >= 0.29


def test_no_typing_by_default(conn, db_url, tmp_path):
    team = make_team(conn, groups=1)
    message = send(conn, next(iter(team.groups)), "sessiz")
    poller = Poller(db_url, tmp_path).start()
    try:
        wait_sent(conn, poller, [message["id"]])
    finally:
        assert poller.terminate() == 0
    assert [e for e in poller.sends() if "presence" in e] == []


def test_a_message_crosses_the_worker_channel_unchanged():
    from poller.outgoing import OutgoingMessage, outgoing

    details = {
        "attachment": {
            "bucket": "claims",
            "path": "g/police.pdf",
            "kind": "document",
            "mime_type": "application/pdf",
            "size": 4096,
            "file_name": "police.pdf",
        },
        "reply_to": {
            "message_id": str(uuid.uuid4()),
            "wa_message_id": "3EB0QUOTED",
            "content": "ilk",
            "attachment_kind": None,
            "sender": "905550000000@s.whatsapp.net",
            "sender_lid": "80000000000001@lid",
        },
        "mentions": [{"jid": "905551112233@s.whatsapp.net", "lid": "81234567890123@lid"}],
    }
    message = outgoing(
        "120363000000000001@g.us", "@905551112233", uuid.uuid4(), details, LID_GROUP_PARTICIPANTS
    )
    assert message.content == "@81234567890123"
    assert OutgoingMessage.from_wire(json.loads(json.dumps(message.wire(), default=str))) == message


# -- neonize, up to the network ------------------------------------------------------------


def test_neonize_messages_are_built_with_neonizes_protobufs():
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_rich_sends", "neonize"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["plain"] == {"conversation": "merhaba"}
    assert out["mention"] == {
        "extendedTextMessage": {
            "text": "Sayın @81234567890123",
            "contextInfo": {"mentionedJID": ["81234567890123@lid"]},
        }
    }
    assert out["reply"] == {
        "extendedTextMessage": {
            "text": "Eksper yarın geliyor.",
            "contextInfo": {
                "stanzaID": "3EB0QUOTED",
                "participant": "905550000000@s.whatsapp.net",
                "quotedMessage": {"documentMessage": {"caption": "Poliçe"}},
            },
        }
    }
    upload = {  # the UploadResponse's fields, as MessageToDict writes bytes and 64-bit ints
        "URL": "https://mmg.whatsapp.net/d/f/x.enc",
        "directPath": "/v/t62.7119-24/x.enc",
        "mediaKey": base64.b64encode(MEDIA_KEY).decode(),
        "fileEncSHA256": base64.b64encode(ENC_SHA256).decode(),
        "fileSHA256": base64.b64encode(SHA256).decode(),
        "fileLength": "4096",
        "mediaKeyTimestamp": "1764612000",
    }
    document = out["document"]["documentWithCaptionMessage"]["message"]["documentMessage"]
    assert document == {
        **upload,
        "mimetype": "application/pdf",
        "caption": "Poliçeniz ekte.",
        "fileName": "police.pdf",
        "title": "police.pdf",
    }
    assert out["document_without_caption"]["documentMessage"]["fileName"] == "police.pdf"
    image = out["image"]["imageMessage"]
    assert {k: image[k] for k in upload} == upload
    assert (image["mimetype"], image["width"], image["height"]) == ("image/png", 640, 480)
    assert image["JPEGThumbnail"]  # a preview, 200 px at most
    assert image["contextInfo"] == {"mentionedJID": ["905551112233@s.whatsapp.net"]}
    assert "caption" not in image  # an empty caption is none
    # send_outgoing: the first send fails after the upload, the retry reuses it
    assert out["sent"] == {
        "uploads": 1,
        "fetches": 1,
        "sends": 2,
        "to": {"User": "120363000000000001", "Server": "g.us"},
        "same_media": True,
    }
    assert out["typing"] == [["120363000000000001@g.us", 0, 0]]


def _neonize_child() -> dict:
    """Builds each kind of message with neonize's classes; no network."""
    from google.protobuf.json_format import MessageToDict
    from neonize.exc import SendMessageError
    from neonize.proto.Neonize_pb2 import SendResponse, UploadResponse

    from poller.outgoing import OutgoingMessage, ReplyTo
    from poller.storage import Attachment, MediaCache
    from poller.transports import neonize_messages as nm

    group = "120363000000000001@g.us"
    up = UploadResponse(
        url="https://mmg.whatsapp.net/d/f/x.enc",
        DirectPath="/v/t62.7119-24/x.enc",
        Handle="",
        MediaKey=MEDIA_KEY,
        FileEncSHA256=ENC_SHA256,
        FileSHA256=SHA256,
        FileLength=4096,
    )
    uploaded = nm.Uploaded(up, 1764612000)
    pdf = Attachment("claims", "x/police.pdf", "document", "application/pdf", 4096, "police.pdf")
    image = Attachment("claims", "x/hasar.png", "image", "image/png", 4096, "hasar.png")
    reply = ReplyTo(
        uuid.uuid4(),
        "3EB0QUOTED",
        "Poliçe",
        "document",
        "905550000000@s.whatsapp.net",
        "80000000000001@lid",
    )

    def built(message: OutgoingMessage, with_upload: nm.Uploaded | None = None) -> dict:
        return MessageToDict(nm.build_message(message, with_upload))

    out: dict = {
        "plain": built(OutgoingMessage(group, "merhaba", uuid.uuid4())),
        "mention": built(
            OutgoingMessage(
                group, "Sayın @81234567890123", uuid.uuid4(), mentions=("81234567890123@lid",)
            )
        ),
        "reply": built(
            OutgoingMessage(group, "Eksper yarın geliyor.", uuid.uuid4(), reply_to=reply)
        ),
        "document": built(OutgoingMessage(group, "Poliçeniz ekte.", uuid.uuid4(), pdf), uploaded),
        "document_without_caption": built(OutgoingMessage(group, "", uuid.uuid4(), pdf), uploaded),
    }
    photo = png(640, 480)
    with_thumbnail = nm._with_thumbnail(up, photo)
    out["image"] = built(
        OutgoingMessage(group, "", uuid.uuid4(), image, mentions=("905551112233@s.whatsapp.net",)),
        nm.Uploaded(
            up, 1764612000, with_thumbnail.thumbnail, with_thumbnail.width, with_thumbnail.height
        ),
    )

    class FakeClient:
        """neonize's client up to the network: upload and send_message recorded, the first
        send refused as WhatsApp would time out."""

        def __init__(self) -> None:
            self.uploads = 0
            self.sent: list = []
            self.presence: list = []

        def upload(self, data: bytes, media_type) -> UploadResponse:
            self.uploads += 1
            return up

        def send_message(self, to, message) -> SendResponse:
            self.sent.append((to, message))
            if len(self.sent) == 1:
                raise SendMessageError("context deadline exceeded")
            return SendResponse(ID="3EB0SENT", Timestamp=1764612001)

        def send_chat_presence(self, jid, state, media) -> None:
            self.presence.append([f"{jid.User}@{jid.Server}", state.value, media.value])

    client = FakeClient()
    fetches = 0

    async def fetch(attachment: Attachment) -> bytes:
        nonlocal fetches
        fetches += 1
        return b"%PDF-1.7"

    async def call(what: str, function):
        return function()

    async def send_twice() -> None:
        cache: MediaCache[nm.Uploaded] = MediaCache(fetch)
        message = OutgoingMessage(group, "Poliçeniz ekte.", uuid.uuid4(), pdf)
        with contextlib.suppress(SendMessageError):
            await nm.send_outgoing(call, client, message, cache)
        response = await nm.send_outgoing(call, client, message, cache)
        assert response.ID == "3EB0SENT"

    asyncio.run(send_twice())
    to = client.sent[0][0]
    out["sent"] = {
        "uploads": client.uploads,
        "fetches": fetches,
        "sends": len(client.sent),
        "to": {"User": to.User, "Server": to.Server},
        "same_media": client.sent[0][1] == client.sent[1][1],
    }
    nm.send_composing(client, group)
    out["typing"] = client.presence
    return out


if __name__ == "__main__" and sys.argv[1:] == ["neonize"]:
    print(json.dumps(_neonize_child()), flush=True)
    os._exit(0)  # Go's threads must not hold the exit up
