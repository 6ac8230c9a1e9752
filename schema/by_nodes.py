"""Answers derived from a prepared document, kept by the identity of its AST nodes.

Documents are prepared once and kept (gateway.web.operations), so the same nodes come back with
every request that sends the same text, and whatever is derived from them alone can be derived
once. The nodes are held beside the answer, so an id cannot be reused by another node while its
entry lives; the cache is emptied when full (documents rarely change in number).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByNodes(Generic[V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[tuple[Hashable, ...], tuple[tuple[object, ...], V]] = {}

    def get(self, nodes: tuple[object, ...], extra: Hashable, make: Callable[[], V]) -> V:
        """The answer for these nodes (and `extra`), made with `make` the first time."""
        key = (*map(id, nodes), extra)
        found = self._entries.get(key)
        if found is not None and all(a is b for a, b in zip(found[0], nodes, strict=True)):
            return found[1]
        answer = make()
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (nodes, answer)
        return answer
