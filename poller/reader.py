"""The reader: takes jobs from the queue (private.take_outbound) and hands them to their lanes.

The take decides, in the database, what can go now; whatever cannot (orphans, final rows,
expired messages, inactive or read-only groups, messages behind an earlier one) it settles in
the same transaction, so everything it returns is sent. It reads only the groups of the
sessions this poller holds and has connected, within each session's room.
"""

import asyncio
import time
from collections.abc import Callable

from poller.db import Database, Row
from poller.jobs import Held, Job
from poller.lanes import Lanes
from poller.outgoing import needs_participants, outgoing
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.wakeup import Wakeup

# Under load, let the next batch gather before reading it: each read, claim and status write
# costs about the same for 1 message as for 50, so small batches spend the database's CPU on
# overhead. A light load (a few messages a read) is read at once, for latency.
LIGHT_BATCH = 4
GATHER_PER_MESSAGE = 0.0005
GATHER_MAX = 0.02


class Reader:
    def __init__(
        self,
        db: Database,
        sessions: SessionManager,
        held: Held,
        lanes: Lanes,
        wakeup: Wakeup,
        settings: Settings,
        turned: Callable[[], None],
    ) -> None:
        self._db = db
        self._turned = turned  # told at every turn: the loop is alive (health, watchdog)
        self._sessions = sessions
        self._held = held
        self._lanes = lanes
        self._wakeup = wakeup
        self._settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop`, waiting between reads as the wake-up says."""
        settings = self._settings
        while not stop.is_set():
            self._turned()
            qty = max(0, min(settings.batch_size, settings.max_inflight - len(self._held)))
            sessions = self._sessions.connected_ids()
            held = self._held.per_session()
            # A slow session must not fill the poller's memory.
            rooms = [settings.session_inflight - held[s] for s in sessions]
            read_at = time.monotonic()
            rows = await self._db.fetch(
                "take",
                {
                    "me": self._sessions.poller_id,
                    "sessions": sessions,
                    "rooms": rooms,
                    "held": self._held.msg_ids(),
                    "vt": settings.visibility_timeout,
                    "qty": qty,
                    "ttl": settings.message_ttl,
                },
            )
            got = await self._admit(rows, read_at + settings.visibility_timeout)
            if qty <= 0 or not any(room > 0 for room in rooms):
                # No room to read (the take still expired what is due): arming would only make
                # the next insert pay for a NOTIFY that no read follows.
                await self._wakeup.pause()
            elif got >= qty:
                self._wakeup.busy()  # a full batch: more is probably waiting
            elif got > LIGHT_BATCH:
                self._wakeup.busy()
                await asyncio.sleep(min(GATHER_MAX, got * GATHER_PER_MESSAGE))
            else:
                await self._wakeup.idle(got)

    async def _admit(self, rows: list[Row], leased_until: float) -> int:
        """Hold the jobs the take returned and hand them to their lanes; how many were new."""
        rows = [row for row in rows if row["msg_id"] not in self._held]  # else: lease renewed
        mentioning = {row["group_jid"] for row in rows if needs_participants(row["details"])}
        participants: dict[str, list[dict]] = {}
        if mentioning:
            found = await self._db.fetch("group_participants", {"jids": sorted(mentioning)})
            participants = {g["jid"]: g["participants"] or [] for g in found}
        for row in rows:
            message = outgoing(
                row["group_jid"],
                row["content"],
                row["message_id"],
                row["details"],
                participants.get(row["group_jid"], []),
            )
            job = Job(
                row["msg_id"],
                row["message_id"],
                row["group_jid"],
                row["session_id"],
                message,
                row["attempts"],
                leased_until,
            )
            self._held.add(job)
            self._lanes.add(job)
        return len(rows)
