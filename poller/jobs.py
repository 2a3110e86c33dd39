"""A job (one queued message this poller holds), what a lane makes of it, and the jobs held.

A lane turns each job into one typed outcome; the outcome writer writes it and only then lets
the job go. While held, a job's queue row is leased (invisible to other pollers) by the lease
keeper; a job let go is the database's again.
"""

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from poller.outgoing import OutgoingMessage
from poller.transports.base import SendResult


@dataclass
class Job:
    msg_id: int
    message_id: uuid.UUID
    group_jid: str
    session_id: uuid.UUID
    message: OutgoingMessage  # what goes out: text, attachment, reply, mentions
    attempts: int
    leased_until: float  # monotonic time our queue lease is known to last until


class Why(StrEnum):
    """Why a job goes back without an attempt counted."""

    SESSION_DOWN = "its session is not sending"
    BEHIND_RETRY = "an earlier message of its group waits for a retry"
    LEASE_LAPSED = "its lease lapsed"
    STOPPING = "the poller is stopping"
    LANE_FAILED = "its lane failed"


@dataclass(frozen=True)
class Sent:
    """WhatsApp accepted it: `sent`, the job archived."""

    job: Job
    result: SendResult


@dataclass(frozen=True)
class Retry:
    """A transient failure: the attempt counts, the job comes back after `delay` seconds."""

    job: Job
    error: str
    delay: float


@dataclass(frozen=True)
class Failed:
    """Failed for good (the attempt counts): `failed` with `error`, the job archived."""

    job: Job
    error: str


@dataclass(frozen=True)
class GiveBack:
    """Not attempted: `pending` again, visible to any poller after `delay` seconds."""

    job: Job
    why: Why
    delay: float = 0.0


Outcome = Sent | Retry | Failed | GiveBack


class Held:
    """The jobs this poller holds, by queue message id. The reader adds them; only the outcome
    writer lets them go."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, msg_id: int) -> bool:
        return msg_id in self._jobs

    def add(self, job: Job) -> None:
        self._jobs[job.msg_id] = job

    def let_go(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self._jobs.pop(job.msg_id, None)

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def msg_ids(self) -> list[int]:
        return list(self._jobs)

    def per_session(self) -> Counter[uuid.UUID]:
        return Counter(job.session_id for job in self._jobs.values())
