"""Short-lived, per-process caches for what is policy rather than consent state.

The purposes (the policy file, loaded into the database) and authenticated API clients change
rarely and are read on every request; each worker keeps them for a few seconds. Consent state,
objections and member data are never cached: a withdrawal counts from the very next request.
A change of policy or a disabled client takes effect within `ttl` seconds on every worker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

POLICY_TTL_SECONDS = 5.0
MAX_ENTRIES = 10_000


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = await load()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (now + self.ttl, value)
        return value

    def clear(self) -> None:
        self._entries.clear()
