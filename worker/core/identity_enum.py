"""An enum hashed by identity, for the core's hot-path sets and dictionaries."""

from __future__ import annotations

import enum

__all__ = ["IdentityEnum"]


class IdentityEnum(enum.Enum):
    """Members are singletons compared by identity, so they are hashed by identity too, in C:
    the core looks states, triggers and causes up in sets on every step of every assignment,
    and ``Enum``'s own hash is Python code."""

    __hash__ = object.__hash__
