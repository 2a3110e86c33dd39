"""Exponential backoff with jitter and a cap: the one rule for every "try again later" of the
poller, a message's retry and a session's reconnect (tenacity's wait, used outside a retry
loop because the waiting is done by the queue's visibility timeout or the session's
supervisor)."""

from tenacity import RetryCallState, wait_exponential_jitter


class Backoff:
    def __init__(self, initial: float, cap: float) -> None:
        self._wait = wait_exponential_jitter(multiplier=initial, max=cap, jitter=initial)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number `attempt` after a failure (1: the first)."""
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._wait(state))
