"""Per-request DataLoaders: each batches the keys asked for in one tick into one statement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.dataloader import DataLoader

from gateway.members import MemberRecord, fetch_members


class Loaders:
    """The loaders of one operation. Made fresh per request, so nothing outlives its transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.member = DataLoader[uuid.UUID, MemberRecord | None](load_fn=self._load_members)

    async def _load_members(self, ids: Sequence[uuid.UUID]) -> list[MemberRecord | None]:
        found = await fetch_members(self._connection, ids)
        return [found.get(member_id) for member_id in ids]
