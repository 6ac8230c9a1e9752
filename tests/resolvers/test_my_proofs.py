"""`me.accessLog(proofsAt:)`: proofs only into a tree the log signed, and a bounded number of them
per request, however many fields or aliases ask (a member token once bought 5,000 proofs)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.sealer import seal_until_current
from gateway.audit.tiles import MAX_PROOFS
from tests.conftest import TEST_SIGNER, Api, add_client, add_member, member_token
from tests.helpers import read, write_events

LOG = """
query($size: Long, $first: Int!) {
  me { accessLog(first: $first, proofsAt: $size) { edges { node { seal { position proof } } } } }
}
"""


@pytest.fixture
async def sealed(api: Api, db: AsyncEngine) -> tuple[uuid.UUID, int]:
    """A member whose three accesses are sealed, in a log of more events than that; returns the
    member and the newest checkpoint's size."""
    member_id = await add_member(db)
    app_key = (await add_client(db, name="Kundeservice", purposes=("membership_service",))).key
    await write_events(db, 40, request="others")
    for _ in range(3):
        await read(api, app_key, member_id, "membership_service")
    await seal_until_current(db, TEST_SIGNER)
    async with db.connect() as connection:
        size = await connection.scalar(
            text("SELECT max(last_position) FROM audit_checkpoints WHERE note IS NOT NULL")
        )
    assert isinstance(size, int)
    return member_id, size


def code_of(response: object) -> str:
    body = response.json()  # type: ignore[attr-defined]
    return str(body["errors"][0]["extensions"]["code"])


async def test_proofs_at_a_signed_size_are_given(api: Api, sealed: tuple[uuid.UUID, int]) -> None:
    member_id, size = sealed
    response = await api.graphql(LOG, {"size": size, "first": 10}, token=member_token(member_id))

    edges = response.json()["data"]["me"]["accessLog"]["edges"]
    assert len(edges) == 3
    assert all(e["node"]["seal"]["proof"] for e in edges)


@pytest.mark.parametrize("delta", [-1, 1])
async def test_a_size_no_checkpoint_signed_is_refused(
    api: Api, sealed: tuple[uuid.UUID, int], delta: int
) -> None:
    """One below the newest checkpoint (inside the log, but never signed) as much as one above."""
    member_id, size = sealed
    response = await api.graphql(
        LOG, {"size": size + delta, "first": 10}, token=member_token(member_id)
    )

    assert code_of(response) == "BAD_USER_INPUT"
    assert f"no checkpoint was signed at {size + delta}" in response.json()["errors"][0]["message"]
    assert response.json()["data"]["me"] is None  # accessLog is non-null: `me` carries the null


async def test_twenty_aliases_asking_for_proofs_are_refused_before_any_work(
    api: Api, sealed: tuple[uuid.UUID, int]
) -> None:
    member_id, size = sealed
    aliases = " ".join(
        f"a{n}: accessLog(first: 250, proofsAt: {size}) {{ edges {{ node {{ seal {{ proof }} }} }} }}"  # noqa: E501
        for n in range(20)
    )
    response = await api.graphql(f"{{ me {{ {aliases} }} }}", token=member_token(member_id))

    assert response.status_code == 400
    assert code_of(response) == "OPERATION_LIMIT_EXCEEDED"
    assert "estimated cost" in response.json()["errors"][0]["message"]


async def test_proofs_are_counted_per_request_across_aliases(
    api: Api, db: AsyncEngine, sealed: tuple[uuid.UUID, int]
) -> None:
    """Within the cost limit, but more proofs than one request may have: the field that would
    pass the budget is refused (and, the connection being non-null, `me` with it)."""
    member_id, size = sealed
    await write_events(db, MAX_PROOFS, request="mine", member_id=member_id)
    aliases = " ".join(
        f"a{n}: accessLog(first: 60, proofsAt: {size}) {{ edges {{ node {{ seal {{ proof }} }} }} }}"  # noqa: E501
        for n in range(2)
    )
    response = await api.graphql(f"{{ me {{ {aliases} }} }}", token=member_token(member_id))

    body = response.json()
    assert body["data"]["me"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    assert f"At most {MAX_PROOFS} entries with proofs" in body["errors"][0]["message"]
