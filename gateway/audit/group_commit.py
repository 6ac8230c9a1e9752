"""Group commit: the access events of concurrent reads, written by one INSERT that commits them all.

A profile read writes nothing but its access events, and answers only after they are durable
(fail closed). Written one read at a time, every read pays a statement and a commit of its own:
at a few thousand reads a second that is most of the database's work for a one-member read. So a
read hands its events here and waits; the worker writes whatever has gathered in one statement in
autocommit (its commit makes all of them durable at once) and then wakes each read: with its count,
or with the error that kept its events out, and the read then answers 503 and releases nothing.

There is no timer: a write starts as soon as a read asks and fewer than `writers` writes are under
way, so a lone read waits no longer than before; under load, the reads that finish while a write is
under way go together in the next one. A read that gave up waiting (its deadline passed) before
its write began is left out; one that gave up after may still be recorded, as when a deadline
passes just after a commit: the log may name an access whose answer was never sent, never the
other way round.

If the statement fails for a reason that is not the database's state (a value a constraint
refuses, such as one longer than its column), each read's events are written again on their own,
so that one bad read does not fail the others.

Writes that change data keep their events in their own transaction (gateway.web.boundary): their
events must commit or roll back with them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import asyncpg

from gateway.audit.trail import AuditTrail, write_events
from gateway.store import db

__all__ = ["GroupCommit"]

# What a value of one read can cause; anything else (the database unavailable, read-only after a
# failover, a deadline) would fail each read's own statement as well.
_REFUSED_VALUES = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

# Ids are taken from the sequence this many at a time (those unused when the worker stops are
# never used: ids have gaps, as a rolled-back insert leaves too).
ID_BLOCK = 1024
NEXT_IDS = "SELECT array_agg(nextval('access_events_id_seq')) FROM generate_series(1, $1::int)"


@dataclass(slots=True)
class _Waiting:
    trail: AuditTrail
    count: int
    done: asyncio.Future[int]


class GroupCommit:
    """One worker's writer of read events. `write` is called from the request tasks of the
    worker's event loop."""

    def __init__(self, pool: asyncpg.Pool, *, writers: int = 2, max_events: int = 10_000) -> None:
        self._pool = pool
        self._writers = writers
        self._max_events = max_events
        self._queue: deque[_Waiting] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._spare: list[int] = []
        # The work done: statements run and events written (tests count work with these).
        self.statements = 0
        self.events = 0

    async def write(self, trail: AuditTrail) -> int:
        """Write the trail's events with those of the other reads waiting now; returns how many,
        once they are durable. Raises what kept them out."""
        count = len(trail.records)
        if not count:
            return 0
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(trail, count, done))
        if len(self._running) < self._writers:
            task = asyncio.create_task(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await done

    async def close(self) -> None:
        """Wait for the writes under way: what was asked for is finished, not dropped."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _ids(self, raw: db.Raw, count: int) -> list[int]:
        """`count` ids from the events' sequence, taken ID_BLOCK at a time (an id is then known
        before its event is written, and so is its leaf hash: see gateway.audit.trail)."""
        while len(self._spare) < count:
            more = await raw.fetchrow(NEXT_IDS, max(ID_BLOCK, count - len(self._spare)))
            self._spare.extend(more[0])
        taken = self._spare[:count]
        del self._spare[:count]
        return taken

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            if batch:
                await self._write(batch)

    def _take(self) -> list[_Waiting]:
        """The waiting reads, oldest first, up to max_events events (always at least one read);
        reads that stopped waiting are left out."""
        batch: list[_Waiting] = []
        events = 0
        while self._queue and (not batch or events + self._queue[0].count <= self._max_events):
            waiting = self._queue.popleft()
            if not waiting.done.done():
                batch.append(waiting)
                events += waiting.count
        return batch

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            async with db.raw_operation(self._pool, transaction=False) as raw:
                ids = await self._ids(raw, sum(waiting.count for waiting in batch))
                self.statements += 1
                written = await write_events(raw, [waiting.trail for waiting in batch], ids=ids)
            self.events += written
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, _REFUSED_VALUES):
                # A value refused: write each read's events alone, so only its read fails.
                for waiting in batch:
                    await self._write([waiting])
                return
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            return
        for waiting in batch:
            if not waiting.done.done():
                waiting.done.set_result(waiting.count)
