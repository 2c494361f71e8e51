"""The backoff policy of protocol.md section 6.10, with injectable randomness.

``delay_n = min(max_sec, initial_sec * 2**n)``; the sleep is uniform in
``[(1 - jitter) * delay_n, delay_n]``; ``n`` resets after a success of the loop that owns it.
"""

from __future__ import annotations

import random

import attrs

__all__ = ["Backoff", "BackoffPolicy"]


@attrs.frozen(slots=True)
class BackoffPolicy:
    """The parameters shared by every backoff loop (poll, registration, report, Shutdown)."""

    initial_sec: float
    max_sec: float
    jitter: float = 0.2

    def __attrs_post_init__(self) -> None:
        if not 0 < self.initial_sec <= self.max_sec:
            raise ValueError("backoff needs 0 < initial_sec <= max_sec")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must lie in [0, 1)")

    def delay(self, attempt: int) -> float:
        """The upper bound ``delay_n`` of the ``attempt``-th consecutive sleep (from 0)."""
        # Cap the exponent so huge attempt counts cannot overflow a float.
        return min(self.max_sec, self.initial_sec * 2.0 ** min(attempt, 64))

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The closed interval the ``attempt``-th sleep is drawn from."""
        upper = self.delay(attempt)
        return ((1.0 - self.jitter) * upper, upper)


class Backoff:
    """One loop's backoff state: how many consecutive failures, and the next sleep."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many sleeps were drawn since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        """Draw the next sleep and count it."""
        low, high = self._policy.bounds(self._attempt)
        self._attempt += 1
        return self._rng.uniform(low, high)

    def reset(self) -> None:
        """The loop succeeded: the next failure starts from ``initial_sec`` again."""
        self._attempt = 0
