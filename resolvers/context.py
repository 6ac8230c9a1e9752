"""The per-request context every resolver receives as `info.context`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit import AuditTrail
from gateway.auth import Principal
from gateway.caches import TtlCache
from gateway.domain import Purpose
from gateway.purposes import fetch_purposes
from gateway.settings import Settings
from resolvers.loaders import Loaders


@dataclass
class Context:
    """One GraphQL operation: its transaction, its caller and its loaders.

    `connection` is inside the operation's single transaction, opened and committed by the HTTP
    endpoint; resolvers never commit.
    """

    connection: AsyncConnection
    principal: Principal
    request_id: str
    settings: Settings
    now: dt.datetime
    audit: AuditTrail
    policy: TtlCache[str, dict[str, Purpose]] | None = field(default=None, repr=False)
    # Errors for fields the access decision withheld, reported beside the data.
    field_errors: list[dict[str, Any]] = field(default_factory=list)
    _purposes: dict[str, Purpose] | None = field(default=None, repr=False)
    _loaders: Loaders | None = field(default=None, repr=False)

    @property
    def loaders(self) -> Loaders:
        """The operation's DataLoaders, made when a resolver first needs them."""
        if self._loaders is None:
            self._loaders = Loaders(self.connection)
        return self._loaders

    @classmethod
    def create(
        cls,
        *,
        connection: AsyncConnection,
        principal: Principal,
        request_id: str,
        settings: Settings,
        policy: TtlCache[str, dict[str, Purpose]] | None = None,
    ) -> Context:
        now = dt.datetime.now(dt.UTC)
        return cls(
            connection=connection,
            principal=principal,
            request_id=request_id,
            settings=settings,
            now=now,
            audit=AuditTrail(request_id=request_id, principal=principal, now=now),
            policy=policy,
        )

    @property
    def known_purposes(self) -> dict[str, Purpose]:
        """The purposes this operation has loaded (empty if it needed none)."""
        return self._purposes or {}

    async def purposes(self) -> dict[str, Purpose]:
        """The purposes in force: the worker's policy cache (a few seconds old at most), else read
        once per operation from this operation's transaction."""
        if self._purposes is None:

            async def load() -> dict[str, Purpose]:
                return {p.key: p for p in await fetch_purposes(self.connection)}

            self._purposes = await (self.policy.get("purposes", load) if self.policy else load())
        return self._purposes
