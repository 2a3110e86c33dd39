"""What a send carries beyond its text, parsed once from the job's `details` (see
private.claim_outbound) into the typed message every transport sends: an attachment, the quoted
message of a reply, and the mentioned participants in the group's own addressing; or a change
to a message sent earlier (an edit or a revoke: edit_message, revoke_message).

Mentions: the job names each participant by phone JID and LID as synced; WhatsApp shows a
mention only when it is written the way the group addresses its members. A LID-addressed group
lists its participants by LID (whatsmeow's GroupParticipant.JID is the LID there, the phone JID
being PhoneNumber), so the synced participants tell the mode (neonize 0.5.2's GroupInfo has no
AddressingMode). The text's `@<digits>` of a mentioned participant is rewritten to the same
addressing, so that the group sees a name rather than a number.
"""

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from poller.storage import Attachment


@dataclass(frozen=True)
class ReplyTo:
    """The quoted message: one of ours, sent in the same group (WhatsApp needs its id, its
    sender and what it said)."""

    message_id: uuid.UUID
    wa_message_id: str
    content: str
    attachment_kind: Literal["image", "document"] | None
    sender: str | None  # our account's phone JID
    sender_lid: str | None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "ReplyTo":
        """From details["reply_to"] (or its wire form): the same keys."""
        return cls(**{**data, "message_id": uuid.UUID(str(data["message_id"]))})


@dataclass(frozen=True)
class Amend:
    """A change to one of our sent messages, known by its WhatsApp id: an edit (the new text is
    the OutgoingMessage's content) or a revoke (delete for everyone)."""

    kind: Literal["edit", "revoke"]
    edit_id: uuid.UUID  # its message_edits row
    wa_message_id: str
    sender: str | None = None  # a revoke: our account's phone JID, which sent the message

    @classmethod
    def parse(cls, kind: Literal["edit", "revoke"], data: Mapping[str, Any]) -> "Amend":
        """From details["edit"] / details["revoke"] (or the wire form, which has kind too)."""
        return cls(
            kind,
            uuid.UUID(str(data["edit_id"])),
            str(data["wa_message_id"]),
            data.get("sender"),
        )


@dataclass(frozen=True)
class OutgoingMessage:
    """One send: the text (the caption, with an attachment), and what else it carries."""

    group_jid: str
    content: str
    message_id: uuid.UUID  # ours, for logs, the upload cache and the simulation
    attachment: Attachment | None = None
    reply_to: ReplyTo | None = None
    mentions: tuple[str, ...] = ()  # JIDs in the group's addressing
    amend: Amend | None = None  # set: this changes a sent message instead of sending one

    @property
    def plain(self) -> bool:
        return (
            self.attachment is None
            and self.reply_to is None
            and not self.mentions
            and self.amend is None
        )

    def wire(self) -> dict[str, Any]:
        """As JSON-ready values (the worker channel); from_wire() reads it back."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "OutgoingMessage":
        attachment, reply, amend = data["attachment"], data["reply_to"], data["amend"]
        return cls(
            data["group_jid"],
            data["content"],
            uuid.UUID(str(data["message_id"])),
            Attachment(**attachment) if attachment else None,
            ReplyTo.parse(reply) if reply else None,
            tuple(data["mentions"]),
            Amend.parse(amend["kind"], amend) if amend else None,
        )


def needs_participants(details: Mapping[str, Any] | None) -> bool:
    """Whether building the message needs the group's synced participants (it mentions)."""
    return bool(details and details.get("mentions"))


def outgoing(
    group_jid: str,
    content: str,
    message_id: uuid.UUID,
    details: Mapping[str, Any] | None,
    participants: Sequence[Mapping[str, Any]] = (),
) -> OutgoingMessage:
    """The message of a job: its text and `details`; `participants` are the group's as synced
    (whatsapp_groups.participants), needed when it mentions."""
    if not details:
        return OutgoingMessage(group_jid, content, message_id)
    for kind in ("edit", "revoke"):
        if kind in details:
            return OutgoingMessage(
                group_jid, content, message_id, amend=Amend.parse(kind, details[kind])
            )
    reply = details.get("reply_to")
    mentions, content = _mentions(details.get("mentions"), participants, content)
    return OutgoingMessage(
        group_jid,
        content,
        message_id,
        Attachment.from_details(details) if "attachment" in details else None,
        ReplyTo.parse(reply) if reply else None,
        mentions,
    )


def lid_addressed(participants: Sequence[Mapping[str, Any]]) -> bool:
    return any(str(p.get("jid") or "").endswith("@lid") for p in participants)


def _mentions(
    raw: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None,
    participants: Sequence[Mapping[str, Any]],
    content: str,
) -> tuple[tuple[str, ...], str]:
    """The mentioned JIDs as the group addresses them, and the text written to match."""
    if not raw:
        return (), content
    if isinstance(raw, Mapping):  # {"everyone": true}: every participant, as the group lists them
        return tuple(str(p["jid"]) for p in participants if p.get("jid")), content
    by_lid = lid_addressed(participants)
    chosen: list[str] = []
    for mention in raw:  # each has a phone JID, a LID, or both (private.resolve_mentions)
        phone, lid = mention.get("jid"), mention.get("lid")
        jid, other = (lid, phone) if (by_lid and lid) or not phone else (phone, lid)
        if other:
            content = _retarget(content, other, jid)
        chosen.append(jid)
    return tuple(chosen), content


def _retarget(content: str, old: str, new: str) -> str:
    """`@<old's digits>` in the text, as a whole number, becomes `@<new's digits>`."""
    old_user, new_user = old.split("@", 1)[0], new.split("@", 1)[0]
    return re.sub(rf"@{re.escape(old_user)}(?!\d)", f"@{new_user}", content)
