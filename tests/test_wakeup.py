"""The reader's wake-up (poller/wakeup.py): which wait follows a read, as its contract says."""

import asyncio

from poller.wakeup import ARM_RETRY, ARM_RETRY_MAX, Wakeup


def waits_after(reads: list[int], arms: list[bool]) -> list[float]:
    """The timeout of each wait that `idle` chose after reads taking `reads` jobs, the arm
    answering `arms` in turn (True: armed)."""
    answers = iter(arms)
    chosen: list[float] = []

    async def arm() -> bool:
        return next(answers)

    async def scenario() -> None:
        wakeup = Wakeup(arm, poll_interval=1.0)

        async def record(timeout: float) -> None:
            chosen.append(timeout)

        wakeup._wait = record  # type: ignore[method-assign]
        for got in reads:
            await wakeup.idle(got)

    asyncio.run(scenario())
    return chosen


def test_failed_arms_back_off_over_empty_reads():
    chosen = waits_after([0] * 8, [False] * 8)
    assert chosen[0] == ARM_RETRY
    assert chosen == sorted(chosen) and chosen[-1] == ARM_RETRY_MAX


def test_a_read_that_took_something_waits_the_shortest_delay_again():
    """A steady stream of inserts keeps the arm failing; its messages must not wait for the
    delay that grew over empty reads (it was the paced stream's p99)."""
    chosen = waits_after([0] * 8 + [1], [False] * 9)
    assert chosen[-2] == ARM_RETRY_MAX
    assert chosen[-1] == ARM_RETRY


def test_an_armed_empty_read_waits_for_a_notification_or_the_poll():
    # Armed after a read: one more read at once (no wait), then the empty read waits the poll.
    assert waits_after([1, 0], [True]) == [1.0]
