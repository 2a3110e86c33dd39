"""neonize's Message protobufs built from an OutgoingMessage, and the send that uploads the
attachment once and sends it (poller/transports/neonize.py calls send_outgoing()).

neonize 0.5.2's builders do not fit as they are: build_image_message and build_document_message
upload the file at every call (a retry would upload it again, a fan-out once per group), so the
upload goes through the MediaCache and the message is built from its UploadResponse, field by
field as those builders fill it; build_reply_message and `quoted=` need neonize's received
Message (its Info), while ours is a message we sent, known by its id, sender and text, so the
ContextInfo is filled as neonize's _make_quoted_message fills it; send_message's mentions are
`@<digits>` parsed from the text with one server for all (mentions_are_lids), while ours are
given, already in the group's addressing (poller/outgoing.py), so mentionedJID is set directly.
An edit or a revoke goes through neonize's own edit_message(chat, message_id, new_message) and
revoke_message(chat, sender, message_id), which build the ProtocolMessage (MESSAGE_EDIT with
the new text as a `conversation`; REVOKE, fromMe since the sender is our account) and send it.

neonize is imported inside the functions: the worker's fork server preloads this module and
must not start Go's runtime.
"""

import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from poller.outgoing import Amend, OutgoingMessage, ReplyTo
from poller.settings import Settings
from poller.storage import MediaCache, StorageFetcher
from poller.transports.base import PermanentSendError

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 200  # pixels, the longer side of an image's preview (neonize's own choice)

# NeonizeSession._call: runs a blocking neonize call on a thread while the session is connected.
Call = Callable[[str, Callable[[], Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Uploaded:
    """An attachment as uploaded to WhatsApp, all a message needs to refer to it again."""

    response: Any  # neonize's UploadResponse: url, DirectPath, MediaKey, hashes, FileLength
    at: int  # Unix seconds: the media key's timestamp
    thumbnail: bytes | None = None  # JPEG preview (images)
    width: int | None = None
    height: int | None = None


class NeonizeMedia:
    """A process's Storage fetcher and upload cache, shared by its sessions (a file sent to
    many groups is uploaded once). Close it (aclose) with the transport."""

    def __init__(self, settings: Settings) -> None:
        self.storage = StorageFetcher(settings)
        self.cache: MediaCache[Uploaded] = MediaCache(self.storage.fetch)

    async def aclose(self) -> None:
        await self.storage.aclose()


def upload(client: Any, data: bytes, kind: Literal["image", "document"]) -> Uploaded:
    """Upload `data` as an image or a document (blocking: run it through the session's call)."""
    from neonize.utils.enum import MediaType

    media_type = MediaType.MediaImage if kind == "image" else MediaType.MediaDocument
    response = client.upload(data, media_type)
    if kind != "image":
        return Uploaded(response, int(time.time()))
    return _with_thumbnail(response, data)


def _with_thumbnail(response: Any, data: bytes) -> Uploaded:
    at = int(time.time())
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="jpeg")
    except (UnidentifiedImageError, OSError) as exc:  # WhatsApp shows it without a preview
        log.info("no thumbnail for an image: %s", exc)
        return Uploaded(response, at)
    return Uploaded(response, at, out.getvalue(), width, height)


def build_message(message: OutgoingMessage, uploaded: Uploaded | None = None) -> Any:
    """The WAWebProtobufsE2E.Message to send: text (`conversation`, or `extendedTextMessage`
    when it quotes or mentions), an image, or a document (wrapped as WhatsApp wraps a document
    with a caption), the content as its caption."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
        DocumentMessage,
        ExtendedTextMessage,
        FutureProofMessage,
        ImageMessage,
        Message,
    )

    context = _context(message)
    attachment = message.attachment
    if attachment is None:
        if context is None:
            return Message(conversation=message.content)
        return Message(
            extendedTextMessage=ExtendedTextMessage(text=message.content, contextInfo=context)
        )
    if uploaded is None:
        raise ValueError(f"message {message.message_id}: its attachment is not uploaded")
    up = uploaded.response
    media = {
        "URL": up.url,
        "directPath": up.DirectPath,
        "mediaKey": up.MediaKey,
        "mediaKeyTimestamp": uploaded.at,
        "fileEncSHA256": up.FileEncSHA256,
        "fileSHA256": up.FileSHA256,
        "fileLength": up.FileLength,
        "mimetype": attachment.mime_type,
        "caption": message.content or None,
        "contextInfo": context,
    }
    if attachment.kind == "image":
        return Message(
            imageMessage=ImageMessage(
                **media,
                JPEGThumbnail=uploaded.thumbnail,
                width=uploaded.width,
                height=uploaded.height,
            )
        )
    document = Message(
        documentMessage=DocumentMessage(
            **media, fileName=attachment.file_name, title=attachment.file_name
        )
    )
    if not message.content:
        return document
    return Message(documentWithCaptionMessage=FutureProofMessage(message=document))


def _context(message: OutgoingMessage) -> Any:
    """The ContextInfo of a reply or a message with mentions, else None."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContextInfo

    if message.reply_to is None and not message.mentions:
        return None
    context = ContextInfo(mentionedJID=list(message.mentions))
    reply = message.reply_to
    if reply is not None:
        context.stanzaID = reply.wa_message_id
        # As neonize quotes: the sender's phone JID, its LID only when no phone JID is known.
        participant = reply.sender or reply.sender_lid
        if participant:
            context.participant = participant
        context.quotedMessage.CopyFrom(_quoted(reply))
    return context


def _quoted(reply: ReplyTo) -> Any:
    """What the quote shows of the quoted message: its text, or its caption and kind."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import DocumentMessage, ImageMessage, Message

    if reply.attachment_kind == "image":
        return Message(imageMessage=ImageMessage(caption=reply.content or None))
    if reply.attachment_kind == "document":
        return Message(documentMessage=DocumentMessage(caption=reply.content or None))
    return Message(conversation=reply.content)


def jid(address: str) -> Any:
    from neonize.utils.jid import build_jid

    user, server = address.split("@", 1)
    return build_jid(user, server)


async def send_outgoing(
    call: Call, client: Any, message: OutgoingMessage, media: MediaCache[Uploaded]
) -> Any:
    """Upload the attachment unless this message's upload is cached (its retries reuse it),
    build the message and send it; returns neonize's SendResponse. neonize's errors (an
    UploadError, a SendMessageError) and storage.py's propagate."""
    if (amend := message.amend) is not None:
        return await call(
            "send", lambda: send_amend(client, message.group_jid, message.content, amend)
        )
    uploaded = None
    attachment = message.attachment
    if attachment is not None:
        uploaded = await media.media_for(
            message.message_id,
            attachment,
            lambda data: call("upload", lambda: upload(client, data, attachment.kind)),
        )
    built = build_message(message, uploaded)
    return await call("send", lambda: client.send_message(jid(message.group_jid), built))


def send_amend(client: Any, group_jid: str, content: str, amend: Amend) -> Any:
    """Send an edit (`content` the new text) or a revoke (blocking: run it through the
    session's call)."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    chat = jid(group_jid)
    if amend.kind == "edit":
        return client.edit_message(chat, amend.wa_message_id, Message(conversation=content))
    if not amend.sender:  # the session was never paired on this row: no retry brings it
        raise PermanentSendError(f"revoke of {amend.wa_message_id}: our account's JID is unknown")
    return client.revoke_message(chat, jid(amend.sender), amend.wa_message_id)


def send_composing(client: Any, group_jid: str) -> None:
    """Show "typing…" in the group (blocking: run it through the session's call)."""
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia

    client.send_chat_presence(
        jid(group_jid),
        ChatPresence.CHAT_PRESENCE_COMPOSING,
        ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT,
    )
