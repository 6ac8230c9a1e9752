"""Per-request DataLoaders: each batches the keys asked for in one tick into one statement."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from strawberry.dataloader import DataLoader

from gateway.records.members import (
    Correction,
    MemberBundle,
    MemberRecord,
    fetch_address_corrections,
    fetch_bundles,
    fetch_members,
    fetch_objections,
)
from gateway.store.db import Raw

V = TypeVar("V")
Fetch = Callable[[Raw, Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, V]]]


def _loader(connection: Raw, fetch: Fetch[V], default: V) -> DataLoader[uuid.UUID, V]:
    async def load(ids: Sequence[uuid.UUID]) -> list[V]:
        found = await fetch(connection, ids)
        return [found.get(member_id, default) for member_id in ids]

    return DataLoader(load_fn=load)


class Loaders:
    """The loaders of one operation. Made fresh per request, so nothing outlives its transaction
    and nothing is served from a cache another request filled."""

    def __init__(self, connection: Raw) -> None:
        self.member: DataLoader[uuid.UUID, MemberRecord | None] = _loader(
            connection, fetch_members, None
        )
        self.bundle: DataLoader[uuid.UUID, MemberBundle | None] = _loader(
            connection, fetch_bundles, None
        )
        self.objections: DataLoader[uuid.UUID, frozenset[str]] = _loader(
            connection, fetch_objections, frozenset()
        )
        self.address_corrections: DataLoader[uuid.UUID, Sequence[Correction]] = _loader(
            connection, fetch_address_corrections, []
        )
