"""Group sync: a session's joined groups → whatsapp_groups (JID as key, participants, read-only
with its reason); groups the account is no longer in become inactive.

A group is read-only for us when our own account (matched by phone JID or LID, device part
stripped) is not among its participants, or when only admins may post and we are not one."""

import asyncio
import logging
import re
import uuid

import orjson

from poller.db import Database
from poller.transports.base import GroupInfo, NotConnected, SessionClient

log = logging.getLogger(__name__)

_GROUP_JID = re.compile(r"^[0-9]+(-[0-9]+)?@g\.us$")


def bare(jid: str | None) -> str | None:
    """'905551234567:12@s.whatsapp.net' → '905551234567@s.whatsapp.net' (no device part)."""
    if not jid or "@" not in jid:
        return None
    user, server = jid.split("@", 1)
    return f"{user.split(':', 1)[0]}@{server}"


def _is_own(address: object, own: set[str]) -> bool:
    """`address` is one of `own`, once its device part is stripped (hot: 256k calls a sync)."""
    if not isinstance(address, str) or not address:
        return False
    if address in own:
        return True
    colon, at = address.find(":"), address.find("@")
    return 0 <= colon < at and address[:colon] + address[at:] in own


def readonly_reason(group: GroupInfo, own: set[str]) -> str | None:
    """Why we cannot post in `group`, or None when we can."""
    me = None
    for participant in group.participants:
        if (
            _is_own(participant.get("jid"), own)
            or _is_own(participant.get("lid"), own)
            or _is_own(participant.get("phone_number"), own)
        ):
            me = participant
            break
    if me is None:
        return "our account is not a participant"
    if group.announce_only and not (me.get("is_admin") or me.get("is_super_admin")):
        return "only admins may post and our account is not an admin"
    return None


def rows_for(groups: list[GroupInfo], own: set[str]) -> list[dict[str, object]]:
    rows = []
    for group in groups:
        if not _GROUP_JID.match(group.jid):
            log.warning("skipping group with an unexpected JID %r", group.jid)
            continue
        reason = readonly_reason(group, own)
        rows.append(
            {
                "jid": group.jid,
                "name": group.name,
                "participants": group.participants,
                "is_readonly": reason is not None,
                "readonly_reason": reason,
            }
        )
    return rows


async def sync_groups(db: Database, session_id: uuid.UUID, client: SessionClient) -> None:
    try:
        groups = await client.joined_groups()
    except NotConnected:
        return  # synced again on the next connect
    if groups is None:
        return
    own = {j for j in (bare(x) for x in client.own_ids()) if j}
    rows = rows_for(groups, own)
    payload = orjson.dumps(rows).decode()
    result = await db.fetch("sync_groups", {"session": session_id, "groups": payload})
    log.info(
        "session %s: %d group(s) synced, %d no longer joined",
        session_id,
        result[0]["upserted"],
        result[0]["deactivated"],
    )


class GroupSync:
    """Syncs a session when asked (on connect, on a group event) and every `interval`."""

    def __init__(
        self, db: Database, clients: dict[uuid.UUID, SessionClient], interval: float
    ) -> None:
        self.db = db
        self.clients = clients
        self.interval = interval
        self._due: asyncio.Queue[uuid.UUID] = asyncio.Queue()

    def request(self, session_id: uuid.UUID) -> None:
        self._due.put_nowait(session_id)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self.interval
        while not stop.is_set():
            try:
                session_id = await asyncio.wait_for(
                    self._due.get(), timeout=max(0.0, next_full - loop.time())
                )
                due = {session_id}
            except TimeoutError:
                due = set(self.clients)
                next_full = loop.time() + self.interval
            while not self._due.empty():
                due.add(self._due.get_nowait())
            for session_id in due:
                client = self.clients.get(session_id)
                if client is None:
                    continue
                try:
                    await sync_groups(self.db, session_id, client)
                except Exception:
                    log.exception("session %s: group sync failed; tried again later", session_id)
