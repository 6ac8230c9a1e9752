"""Per-request DataLoaders: each batches the keys asked for in one tick into one statement."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.dataloader import DataLoader

from gateway.consents import fetch_consent_states
from gateway.domain import EnrichedField
from gateway.members import (
    Correction,
    EnrichedValue,
    MemberBundle,
    MemberRecord,
    fetch_address_corrections,
    fetch_bundles,
    fetch_enrichment,
    fetch_members,
    fetch_objections,
)
from gateway.policy import ConsentState

V = TypeVar("V")
Fetch = Callable[[AsyncConnection, Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, V]]]


def _loader(connection: AsyncConnection, fetch: Fetch[V], default: V) -> DataLoader[uuid.UUID, V]:
    async def load(ids: Sequence[uuid.UUID]) -> list[V]:
        found = await fetch(connection, ids)
        return [found.get(member_id, default) for member_id in ids]

    return DataLoader(load_fn=load)


class Loaders:
    """The loaders of one operation. Made fresh per request, so nothing outlives its transaction
    and nothing is served from a cache another request filled."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.member: DataLoader[uuid.UUID, MemberRecord | None] = _loader(
            connection, fetch_members, None
        )
        self.bundle: DataLoader[uuid.UUID, MemberBundle | None] = _loader(
            connection, fetch_bundles, None
        )
        self.consents: DataLoader[uuid.UUID, Mapping[str, ConsentState]] = _loader(
            connection, fetch_consent_states, {}
        )
        self.objections: DataLoader[uuid.UUID, frozenset[str]] = _loader(
            connection, fetch_objections, frozenset()
        )
        self.enrichment: DataLoader[uuid.UUID, Mapping[EnrichedField, EnrichedValue]] = _loader(
            connection, fetch_enrichment, {}
        )
        self.address_corrections: DataLoader[uuid.UUID, Sequence[Correction]] = _loader(
            connection, fetch_address_corrections, []
        )
