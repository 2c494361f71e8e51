"""Retry delay with backoff: our extension of the reference cluster, not part of Spider.

A task may declare ``retry_backoff`` (initial delay, growth factor, cap). When an instance of it
fails and a retry is left, storage puts the task in the ``waiting`` state until the delay has
passed, then makes it ready and enqueues it as an immediate retry would be. Without a backoff a
retry is enqueued at once, as in Spider. The n-th retry (n = 1, 2, ...) waits
``min(max_ms, initial_ms * factor ** (n - 1))`` milliseconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

import attrs

__all__ = ["MAX_DELAY_MS", "DelayedQueue", "RetryBackoff", "RetryBackoffError"]

#: One day: the longest delay accepted (as for timeouts).
MAX_DELAY_MS: Final = 86_400_000
_MAX_FACTOR: Final = 100.0

_Item = TypeVar("_Item")


class RetryBackoffError(ValueError):
    """A backoff setting is out of range; the message names the field."""


@attrs.frozen(slots=True)
class RetryBackoff:
    """Delay before the n-th retry: ``min(max_ms, initial_ms * factor ** (n - 1))`` ms."""

    initial_ms: int
    factor: float = 2.0
    max_ms: int = 60_000

    def check(self, where: str) -> None:
        """Raise :class:`RetryBackoffError` naming ``where`` unless every field is in range."""
        for field, value in (("initial_ms", self.initial_ms), ("max_ms", self.max_ms)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= (MAX_DELAY_MS)
            ):
                raise RetryBackoffError(
                    f"{where}: retry_backoff.{field}: must be an integer in 0..{MAX_DELAY_MS}, "
                    f"got {value!r}"
                )
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise RetryBackoffError(f"{where}: retry_backoff.factor: must be a number")
        if not 1.0 <= factor <= _MAX_FACTOR:
            raise RetryBackoffError(
                f"{where}: retry_backoff.factor: must be in 1..{_MAX_FACTOR:g}, got {factor!r}"
            )
        if self.max_ms < self.initial_ms:
            raise RetryBackoffError(
                f"{where}: retry_backoff.max_ms: must be >= initial_ms "
                f"({self.max_ms} < {self.initial_ms})"
            )

    def delay_ms(self, retry: int) -> int:
        """The delay before retry number ``retry`` (1 for the first retry)."""
        exponent = max(0, retry - 1)
        # Capped before it grows: factor ** exponent overflows floats for long retry chains.
        delay = float(self.initial_ms)
        for _ in range(exponent):
            delay *= self.factor
            if delay >= self.max_ms:
                return self.max_ms
        return min(self.max_ms, round(delay))

    def to_document(self) -> list[Any]:
        """``[initial_ms, factor, max_ms]``: the form in the submission encoding."""
        return [self.initial_ms, self.factor, self.max_ms]

    @classmethod
    def from_document(cls, where: str, value: object) -> RetryBackoff:
        """The backoff of a submission entry ``[initial_ms, factor, max_ms]``."""
        if not isinstance(value, list) or len(value) != 3:
            raise RetryBackoffError(f"{where}: retry_backoff: must be [initial_ms, factor, max_ms]")
        backoff = cls(value[0], value[1], value[2])
        backoff.check(where)
        return backoff

    @classmethod
    def from_mapping(cls, where: str, value: object) -> RetryBackoff:
        """The backoff of a job file's ``retry_backoff: {initial_ms, factor, max_ms}``."""
        if not isinstance(value, Mapping):
            raise RetryBackoffError(f"{where}: retry_backoff: must be a mapping")
        unknown = sorted(set(value) - {"initial_ms", "factor", "max_ms"})
        if unknown:
            raise RetryBackoffError(
                f"{where}: retry_backoff.{unknown[0]}: unknown key (allowed: factor, "
                "initial_ms, max_ms)"
            )
        if "initial_ms" not in value:
            raise RetryBackoffError(f"{where}: retry_backoff.initial_ms: required")
        defaults = cls(0)
        backoff = cls(
            value["initial_ms"],
            value.get("factor", defaults.factor),
            value.get("max_ms", max(defaults.max_ms, value["initial_ms"])),
        )
        backoff.check(where)
        return backoff


@attrs.define(slots=True)
class DelayedQueue(Generic[_Item]):
    """Items held until a due time (storage's waiting tasks), earliest first."""

    _heap: list[tuple[float, int, _Item]] = attrs.field(factory=list)
    _sequence: int = 0

    def push(self, due: float, item: _Item) -> None:
        """Hold ``item`` until ``due``."""
        self._sequence += 1
        heapq.heappush(self._heap, (due, self._sequence, item))

    def pop_due(self, now: float) -> list[_Item]:
        """Remove and return every item due at ``now``, earliest first."""
        due: list[_Item] = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def next_due(self) -> float | None:
        """The earliest due time held, or None."""
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        """Drop everything held."""
        self._heap.clear()
