"""One lock order for everything that touches a member: the member's row first, then whatever else.

Every write path takes the member's row before anything of the member's (a consent lock, an
enriched value, an objection), and takes it at the level its change needs:

    SHARE   changes beside the row: grants and enriched values (FOR KEY SHARE, the lock a
            foreign key to the member takes anyway; many at once)
    CHANGE  changes to the row's own fields (a profile update, a cleansing), changes that decide
            what to purge (a withdrawal, an expiry) and objections and their lifting: FOR NO KEY
            UPDATE, one at a time, beside any SHARE. Two withdrawals of one member, each seeing
            the other's consent still in force, would otherwise both keep a value that neither
            then covers; an objection could meet a lifting between its two statements.
    END     closing and erasing (FOR UPDATE): waits for every change in flight, and every change
            that comes meanwhile waits for it

Under READ COMMITTED a row lock that waited re-reads the row the other transaction committed, so
the status returned is the one in force once the lock is held: a change that waited for a closing
finds CLOSED, one that waited for an erasure finds no member. Several members are taken in id
order (`lock_members`), so that two such transactions cannot deadlock on each other's members.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterable

from gateway.domain import MembershipStatus
from gateway.store.db import Raw


class Hold(enum.Enum):
    SHARE = "FOR KEY SHARE"
    CHANGE = "FOR NO KEY UPDATE"
    END = "FOR UPDATE"


_ONE = {
    hold: f"SELECT membership_status FROM members WHERE id = $1 {hold.value}"  # noqa: S608
    for hold in Hold
}
_MANY = {
    hold: "SELECT id, membership_status FROM members WHERE id = ANY($1::uuid[]) "  # noqa: S608
    f"ORDER BY id {hold.value}"
    for hold in Hold
}


async def lock_member(connection: Raw, member_id: uuid.UUID, hold: Hold) -> MembershipStatus | None:
    """Hold one member's row until the transaction ends; its status now, None if there is no
    such member (never was, or erased while we waited)."""
    row = await connection.fetchrow(_ONE[hold], member_id)
    return MembershipStatus(row["membership_status"]) if row is not None else None


async def lock_members(
    connection: Raw, member_ids: Iterable[uuid.UUID], hold: Hold
) -> dict[uuid.UUID, MembershipStatus]:
    """Hold several members' rows, in id order; the status of each that exists."""
    rows = await connection.fetch(_MANY[hold], sorted(set(member_ids)))
    return {row["id"]: MembershipStatus(row["membership_status"]) for row in rows}


def locked_at(now: dt.datetime) -> dt.datetime:
    """The time a change happens: once it holds the member, not when its request began. A change
    it waited for committed before it (a grant before the closing that withdraws it, an objection
    before the lifting), and it must not be dated before that one."""
    return max(now, dt.datetime.now(dt.UTC))
