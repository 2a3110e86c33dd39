"""Lanes: one per group with jobs in hand, sending them one after another.

A lane paces each send with its session's bucket, sends, and turns what happened into one
outcome for the writer. It never waits for the database. Per-group order: a lane stops at the
first retry and gives back everything behind it; the read offers a group only while its oldest
message is visible, so nothing given back overtakes the retry.
"""

import asyncio
import logging
import time
from collections import deque

from poller.backoff import Backoff
from poller.jobs import Failed, GiveBack, Job, Outcome, Retry, Sent, Why
from poller.outcomes import OutcomeWriter
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.transports.base import (
    NotConnected,
    PermanentSendError,
    SendError,
    SessionClient,
    TransientSendError,
)
from poller.wakeup import Wakeup

log = logging.getLogger(__name__)

LEASE_MARGIN = 1.0  # seconds: a send is not started this close to the end of its lease
NOT_CONNECTED_DELAY = 1.0  # seconds before jobs refused as not connected are offered again


class Lane:
    def __init__(
        self,
        jid: str,
        sessions: SessionManager,
        writer: OutcomeWriter,
        backoff: Backoff,
        max_attempts: int,
        typing: float,
        stop: asyncio.Event,
    ) -> None:
        self.jid = jid
        self.jobs: deque[Job] = deque()
        self._sessions = sessions
        self._writer = writer
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._typing = typing  # seconds of "typing…" before each send; 0: none
        self._stop = stop

    async def run(self) -> None:
        """Until the lane has no job left; every job ends as one outcome for the writer."""
        try:
            while self.jobs:
                job = self.jobs[0]
                if self._stop.is_set():
                    self._give_back_all(Why.STOPPING)
                elif time.monotonic() > job.leased_until - LEASE_MARGIN:
                    # The database was out of reach long enough for the lease to lapse: another
                    # poller may have the message. Never send on a lapsed lease.
                    log.warning("lease of queue message %s lapsed before its send", job.msg_id)
                    self._give_back_all(Why.LEASE_LAPSED)
                elif (outcome := await self._send(job)) is None:
                    continue  # the pacing wait ended with the stop
                elif isinstance(outcome, GiveBack):
                    self._give_back_all(outcome.why, outcome.delay)
                else:
                    self.jobs.popleft()
                    self._writer.add(outcome)
                    if isinstance(outcome, Retry):
                        self._give_back_all(Why.BEHIND_RETRY)
        except Exception:
            # Not a send failure (those are outcomes): a bug. Its jobs go back to the queue.
            log.exception("lane for %s failed; its messages return to the queue", self.jid)
            self._give_back_all(Why.LANE_FAILED)

    async def _send(self, job: Job) -> Outcome | None:
        """Pace, send, and say what became of `job`; None if the stop ended the pacing."""
        if not self._sessions.is_connected(job.session_id):
            return GiveBack(job, Why.SESSION_DOWN)
        if not await self._sessions.limiters[job.session_id].acquire(self._stop):
            return None
        # The pacing wait can be long: the session may have dropped or changed hands.
        client = self._sessions.connected_client(job.session_id)
        if client is None:
            return GiveBack(job, Why.SESSION_DOWN)
        try:
            if self._typing and job.message.amend is None:  # nobody types an edit or a delete
                await self._show_typing(client)
            result = await client.send(job.message)
        except NotConnected:
            # The client said connected, WhatsApp did not take it: a moment before the next
            # look, so that a client between the two does not spin the lane.
            return GiveBack(job, Why.SESSION_DOWN, NOT_CONNECTED_DELAY)
        except PermanentSendError as exc:
            log.warning("message %s failed: %s", job.message_id, exc)
            return Failed(job, str(exc))
        except Exception as exc:
            if not isinstance(exc, TransientSendError):
                log.exception("unexpected error sending %s; retrying", job.message_id)
            return self._retry(job, exc)
        return Sent(job, result)

    async def _show_typing(self, client: SessionClient) -> None:
        try:
            await client.typing(self.jid)
        except SendError as exc:  # a presence is a courtesy: the send goes on without it
            log.info("typing presence in %s not shown: %s", self.jid, exc)
            return
        await asyncio.sleep(self._typing)

    def _retry(self, job: Job, exc: Exception) -> Retry | Failed:
        attempts = job.attempts + 1
        if attempts >= self._max_attempts:
            reason = f"gave up after {attempts} attempts; last error: {exc}"
            log.warning("message %s failed: %s", job.message_id, reason)
            return Failed(job, reason)
        delay = self._backoff.delay(attempts)
        log.info(
            "message %s: attempt %d failed (%s); retry in %.1fs",
            job.message_id,
            attempts,
            exc,
            delay,
        )
        return Retry(job, str(exc), delay)

    def _give_back_all(self, why: Why, delay: float = 0.0) -> None:
        while self.jobs:
            self._writer.add(GiveBack(self.jobs.popleft(), why, delay))


class Lanes:
    """The lanes of the groups with jobs in hand: a lane starts with its group's first job and
    ends when it has none left."""

    def __init__(
        self,
        sessions: SessionManager,
        writer: OutcomeWriter,
        wakeup: Wakeup,
        settings: Settings,
        stop: asyncio.Event,
    ) -> None:
        self._sessions = sessions
        self._writer = writer
        self._wakeup = wakeup
        self._backoff = Backoff(settings.retry_initial, settings.retry_max)
        self._max_attempts = settings.max_attempts
        self._typing = settings.typing_ms / 1000
        self._stop = stop
        self._lanes: dict[str, Lane] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, job: Job) -> None:
        lane = self._lanes.get(job.group_jid)
        if lane is None:
            lane = Lane(
                job.group_jid,
                self._sessions,
                self._writer,
                self._backoff,
                self._max_attempts,
                self._typing,
                self._stop,
            )
            self._lanes[job.group_jid] = lane
            self._tasks[job.group_jid] = asyncio.create_task(
                self._run(lane), name=f"lane-{job.group_jid}"
            )
        lane.jobs.append(job)

    async def _run(self, lane: Lane) -> None:
        try:
            await lane.run()
        finally:
            del self._lanes[lane.jid]
            del self._tasks[lane.jid]
            self._wakeup.notify()

    async def drain(self) -> None:
        """At the stop: each lane finishes the send in hand and gives the rest back."""
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
