"""The per-request context every resolver receives as `info.context`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.access.caches import TtlCache
from gateway.access.purposes import fetch_purposes
from gateway.audit.tiles import MAX_PROOFS
from gateway.audit.trail import AuditTrail
from gateway.domain import MemberPrincipal, Principal, Purpose
from gateway.errors import BadUserInput, TillitError
from gateway.settings import Settings
from gateway.store.db import Raw
from resolvers.loaders import Loaders


class RawPathOnly(RuntimeError):
    """A resolver of a raw-pool operation asked for SQLAlchemy (a bug: see gateway.web.graphql's
    RAW_ROOTS; the fuzz test sends every root field through the endpoint)."""


@dataclass
class Context:
    """One operation: its connection, its caller, its audit trail and its loaders.

    The connection is inside the operation's single transaction (or, for a read, autocommit),
    opened and committed by the operation boundary (gateway.web.boundary); resolvers never commit.
    `db` speaks raw SQL on every path; `sql` is the SQLAlchemy connection, which operations on
    the raw pool do not have.
    """

    db: Raw
    principal: Principal
    request_id: str
    settings: Settings
    now: dt.datetime
    audit: AuditTrail
    policy: TtlCache[str, dict[str, Purpose]] | None = field(default=None, repr=False)
    # Errors for fields the access decision withheld, reported beside the data.
    field_errors: list[dict[str, Any]] = field(default_factory=list)
    # The `extensions` of a withheld field's error, by the decision's Withheld (shared by the
    # members decided alike) and purpose: made once an operation, not once a member.
    withheld_extensions: dict[tuple[int, str], tuple[Any, dict[str, Any]]] = field(
        default_factory=dict, repr=False
    )
    _sql: AsyncConnection | None = field(default=None, repr=False)
    _purposes: dict[str, Purpose] | None = field(default=None, repr=False)
    _loaders: Loaders | None = field(default=None, repr=False)
    # Inclusion proofs this operation may still ask for, across all its fields and aliases.
    _proofs_left: int = field(default=MAX_PROOFS, repr=False)

    def spend_proofs(self, count: int) -> None:
        """Take `count` proofs from the operation's budget (MAX_PROOFS in all, however many
        fields ask), or refuse before any is computed."""
        if count > self._proofs_left:
            raise BadUserInput(
                f"At most {MAX_PROOFS} entries with proofs in one request; ask for fewer "
                "(`first`) or in several requests.",
                argument="proofsAt",
            )
        self._proofs_left -= count

    @property
    def sql(self) -> AsyncConnection:
        """The operation's SQLAlchemy connection (not on the raw pool's operations)."""
        if self._sql is None:
            raise RawPathOnly("this operation runs on the raw pool: use `context.db`")
        return self._sql

    @property
    def loaders(self) -> Loaders:
        """The operation's DataLoaders, made when a resolver first needs them."""
        if self._loaders is None:
            self._loaders = Loaders(self.db)
        return self._loaders

    @classmethod
    def create(
        cls,
        *,
        db: Raw,
        principal: Principal,
        sql: AsyncConnection | None = None,
        request_id: str,
        settings: Settings,
        policy: TtlCache[str, dict[str, Purpose]] | None = None,
    ) -> Context:
        now = dt.datetime.now(dt.UTC)
        return cls(
            db=db,
            _sql=sql,
            principal=principal,
            request_id=request_id,
            settings=settings,
            now=now,
            audit=AuditTrail(request_id=request_id, principal=principal, now=now),
            policy=policy,
        )

    def refused(self, operation: str, error: TillitError) -> TillitError:
        """Record a refused attempt of the caller (on their own record if they are a member, on
        no member otherwise) and give back the error to raise."""
        caller = self.principal
        member_id = caller.member_id if isinstance(caller, MemberPrincipal) else None
        self.audit.refused(operation=operation, member_id=member_id, code=error.code)
        return error

    @property
    def known_purposes(self) -> dict[str, Purpose]:
        """The purposes this operation has loaded (empty if it needed none)."""
        return self._purposes or {}

    async def purposes(self) -> dict[str, Purpose]:
        """The purposes in force: the worker's policy cache (a few seconds old at most), else read
        once per operation from this operation's transaction."""
        if self._purposes is None:

            async def load() -> dict[str, Purpose]:
                return {p.key: p for p in await fetch_purposes(self.db)}

            self._purposes = await (self.policy.get("purposes", load) if self.policy else load())
        return self._purposes
