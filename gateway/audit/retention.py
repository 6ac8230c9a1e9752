"""Retention: whole monthly partitions of the access log are detached and dropped, never rows one
by one, and a signed checkpoint records what went, so that verification still passes."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.sealing import (
    EMPTY_ROOT,
    SEAL_LOCK,
    Checkpoint,
    last_checkpoint,
    write_checkpoint,
)
from gateway.audit.tiles import edge_at
from gateway.signing import Signer
from gateway.store.db import raw_of

_PARTITION = re.compile(r"^access_events_(\d{4})_(\d{2})$")


class RetentionRefused(Exception):
    """Dropping would lose events that are not sealed yet."""


@dataclass(frozen=True, slots=True)
class Dropped:
    partition: str
    month: dt.date
    events: int


def month_start(value: dt.datetime) -> dt.date:
    return value.date().replace(day=1)


async def partitions(connection: AsyncConnection) -> list[tuple[str, dt.date]]:
    """The access log's monthly partitions, oldest first."""
    names = (
        await connection.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'access_events'::regclass"
            )
        )
    ).scalars()
    months = []
    for name in names:
        match = _PARTITION.match(name)
        if match:
            months.append((name, dt.date(int(match.group(1)), int(match.group(2)), 1)))
    return sorted(months, key=lambda item: item[1])


async def drop_before(
    connection: AsyncConnection, signer: Signer, *, cutoff: dt.date
) -> tuple[list[Dropped], Checkpoint | None]:
    """Drop every monthly partition that ends on or before `cutoff` (a first of the month).
    Refuses if any of their events is not sealed yet. Needs the tables' owner. No commit."""
    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEAL_LOCK})
    doomed = []
    for name, month in await partitions(connection):
        ends = (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        if ends <= cutoff:
            doomed.append((name, month))
    if not doomed:
        return [], None
    dropped = []
    for name, month in doomed:
        # The partition's name comes from the catalogue and matched _PARTITION: safe to quote.
        unsealed = await connection.scalar(
            text(
                f'SELECT count(*) FROM "{name}" p '  # noqa: S608  # a catalogue name, checked
                "LEFT JOIN audit_seals s ON s.event_id = p.id WHERE s.event_id IS NULL"
            )
        )
        if unsealed:
            raise RetentionRefused(
                f"{name} holds {unsealed} events not sealed yet; run the sealer first"
            )
        events = int(await connection.scalar(text(f'SELECT count(*) FROM "{name}"')) or 0)  # noqa: S608
        dropped.append(Dropped(name, month, events))
    for item in dropped:
        await connection.execute(
            text(f'ALTER TABLE access_events DETACH PARTITION "{item.partition}"')
        )
        await connection.execute(text(f'DROP TABLE "{item.partition}"'))
    previous = await last_checkpoint(connection)
    if previous is None:
        raise RetentionRefused("there is no checkpoint yet; run the sealer first")
    checkpoint = await write_checkpoint(
        connection,
        signer,
        kind="RETENTION",
        previous=previous,
        horizon=previous.horizon,
        event_count=0,
        batch_root=EMPTY_ROOT,
        details={
            # Where sealing stands carries over (a batch may have stopped inside a transaction).
            **({"last_id": previous.details["last_id"]} if "last_id" in previous.details else {}),
            "dropped_before": dt.datetime.combine(cutoff, dt.time(), dt.UTC).isoformat(),
            "partitions": [
                {"name": d.partition, "month": d.month.isoformat(), "events": d.events}
                for d in dropped
            ],
        },
        now=dt.datetime.now(dt.UTC),
        tree_root=(await edge_at(await raw_of(connection), previous.last_position)).root(),
    )
    return dropped, checkpoint
