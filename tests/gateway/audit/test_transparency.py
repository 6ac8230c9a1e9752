"""Proofs anyone can check: the log's checkpoints, keys, inclusion and consistency proofs, checked
here by a verifier written in this file from the texts of RFC 6962 (section 2.1), C2SP
signed-note, tlog-checkpoint and tlog-cosignature, with hashlib, base64 and the Ed25519 of
`cryptography` only: nothing of gateway's is used to check what gateway serves."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.sealer import seal_until_current
from gateway.signing import Signer
from tests.conftest import TEST_AUDIT_KEY, TEST_SIGNER, Api, make_settings, serving
from tests.helpers import leaves_of, verify, write_events
from tests.tlog import consistent, included, mth, note_key_id, open_checkpoint, sha256

# -- the log -----------------------------------------------------------------------------------

ORIGIN = TEST_SIGNER.origin
PUBLIC = base64.b64decode(TEST_SIGNER.verifier.public_base64)


@pytest.fixture
async def grown(db: AsyncEngine) -> AsyncEngine:
    """A log of 600 events in checkpoints of 300, 1, 255 and 44 (tiles fill and spill over)."""
    for count in (300, 1, 255, 44):
        await write_events(db, count, request=f"r{count}")
        await seal_until_current(db, TEST_SIGNER)
    return db


@pytest.fixture
async def public(grown: AsyncEngine, gateway_url: str) -> AsyncIterator[Api]:
    async with serving(make_settings(gateway_url), gateway_url) as client:
        yield client


async def note_of(api: Api, size: int | None = None) -> str:
    response = await api.http.get("/audit/checkpoint", params={"size": size} if size else None)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    return response.text


async def inclusion(api: Api, size: int, *positions: int) -> list[list[bytes]]:
    response = await api.http.get(
        "/audit/proof/inclusion", params=[("size", size), *(("position", p) for p in positions)]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["treeSize"] == size
    assert [p["position"] for p in body["proofs"]] == list(positions)
    return [[base64.b64decode(h) for h in p["hashes"]] for p in body["proofs"]]


async def consistency(api: Api, old: int, new: int) -> list[bytes]:
    response = await api.http.get("/audit/proof/consistency", params={"from": old, "to": new})
    assert response.status_code == 200, response.text
    return [base64.b64decode(h) for h in response.json()["hashes"]]


async def test_the_checkpoint_is_a_signed_note_over_the_rfc_6962_root_of_every_seal(
    public: Api, grown: AsyncEngine
) -> None:
    leaves = await leaves_of(grown)

    size, root = open_checkpoint(await note_of(public), ORIGIN, PUBLIC)

    assert size == len(leaves) == 600
    assert root == mth(leaves)


async def test_every_checkpoint_size_is_served_and_signed(public: Api, grown: AsyncEngine) -> None:
    leaves = await leaves_of(grown)
    for size in (300, 301, 556, 600):
        assert open_checkpoint(await note_of(public, size), ORIGIN, PUBLIC) == (
            size,
            mth(leaves[:size]),
        )


async def test_inclusion_proofs_verify_for_every_kind_of_position(
    public: Api, grown: AsyncEngine
) -> None:
    leaves = await leaves_of(grown)
    for size in (300, 301, 556, 600):
        root = open_checkpoint(await note_of(public, size), ORIGIN, PUBLIC)[1]
        positions = sorted({1, 2, 255, 256, 257, 299, 300, size // 2, size - 1, size})
        # At most two positions a request (each proof costs the log CPU; see test_tiles).
        proofs = [
            p
            for n in range(0, len(positions), 2)
            for p in await inclusion(public, size, *positions[n : n + 2])
        ]
        for position, proof in zip(positions, proofs, strict=True):
            assert included(position - 1, size, leaves[position - 1], proof, root)


async def test_mutated_inclusion_proofs_and_wrong_sizes_fail(
    public: Api, grown: AsyncEngine
) -> None:
    leaves = await leaves_of(grown)
    size, root = open_checkpoint(await note_of(public), ORIGIN, PUBLIC)
    [proof] = await inclusion(public, size, 123)
    leaf = leaves[122]
    assert included(122, size, leaf, proof, root)

    flipped = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    for bad in (flipped, proof[:-1], [*proof, proof[-1]], list(reversed(proof))):
        assert not included(122, size, leaf, bad, root)
    assert not included(123, size, leaf, proof, root)  # another position
    assert not included(122, size, leaves[123], proof, root)  # another leaf
    # The same proof against a checkpoint of another size does not lead to its root.
    other_size, other_root = open_checkpoint(await note_of(public, 556), ORIGIN, PUBLIC)
    assert not included(122, other_size, leaf, proof, other_root)
    assert not included(122, 122, leaf, proof, root)  # a tree without the leaf
    assert not included(122, 200, leaf, proof, root)  # a tree of another shape


async def test_consistency_proofs_verify_between_every_pair_of_checkpoints(
    public: Api, grown: AsyncEngine
) -> None:
    sizes = (300, 301, 556, 600)
    roots = {s: open_checkpoint(await note_of(public, s), ORIGIN, PUBLIC)[1] for s in sizes}
    for old in sizes:
        for new in sizes:
            if old <= new:
                proof = await consistency(public, old, new)
                assert consistent(old, new, roots[old], roots[new], proof), (old, new)
    # Sizes with no checkpoint prove consistency too, as in RFC 6962.
    leaves = await leaves_of(grown)
    for old in (1, 2, 3, 7, 64, 255, 256, 257, 512, 599):
        proof = await consistency(public, old, 600)
        assert consistent(old, 600, mth(leaves[:old]), roots[600], proof), old


async def test_mutated_consistency_proofs_wrong_sizes_and_a_fork_fail(
    public: Api, grown: AsyncEngine
) -> None:
    leaves = await leaves_of(grown)
    old_root, new_root = mth(leaves[:301]), mth(leaves)
    proof = await consistency(public, 301, 600)
    assert consistent(301, 600, old_root, new_root, proof)

    assert not consistent(301, 600, old_root, new_root, proof[:-1])
    assert not consistent(301, 600, old_root, new_root, [*proof, proof[0]])
    assert not consistent(301, 600, old_root, new_root, [proof[0][::-1], *proof[1:]])
    assert not consistent(300, 600, old_root, new_root, proof)
    # Against another checkpoint's signed root, or a tree of another shape.
    assert not consistent(301, 556, old_root, mth(leaves[:556]), proof)
    assert not consistent(301, 1200, old_root, new_root, proof)
    # A fork: a history in which event 42 read differently, signed with the log's own key,
    # cannot be shown consistent with what the log published before.
    forked = list(leaves)
    forked[41] = sha256(b"\x00" + b'{"forged":true}')
    assert not consistent(301, 600, old_root, mth(forked), proof)
    assert not consistent(301, 600, mth(forked[:301]), new_root, proof)


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ({"size": "600"}, 400, "`position` is required"),
        ({"size": "601", "position": "1"}, 404, "No checkpoint covers tree size 601"),
        ({"size": "700", "position": "1"}, 404, "No checkpoint covers tree size 700"),
        ({"size": "0", "position": "1"}, 400, "positive whole number"),
        ({"size": "-5", "position": "1"}, 400, "positive whole number"),
        ({"size": "600", "position": "601"}, 400, "not in a tree of 600"),
        ({"size": "600", "position": "x"}, 400, "positive whole number"),
        ({"size": "9" * 40, "position": "1"}, 400, "below 2^63"),
    ],
)
async def test_bad_inclusion_requests_are_refused_clearly(
    public: Api, query: dict[str, str], status: int, words: str
) -> None:
    response = await public.http.get("/audit/proof/inclusion", params=query)
    assert response.status_code == status
    assert words in response.json()["errors"][0]["message"]


async def test_bad_consistency_requests_are_refused_clearly(public: Api) -> None:
    for query, status, words in (
        ({"from": "10", "to": "5"}, 400, "the log only grows"),
        ({"from": "1", "to": "700"}, 404, "No checkpoint covers tree size 700"),
        ({"to": "600"}, 400, "`from` is required"),
    ):
        response = await public.http.get("/audit/proof/consistency", params=query)
        assert response.status_code == status
        assert words in response.json()["errors"][0]["message"]


async def test_too_many_positions_are_refused_before_any_work(public: Api) -> None:
    params: list[tuple[str, Any]] = [("size", 600), *(("position", 1) for _ in range(257))]
    response = await public.http.get("/audit/proof/inclusion", params=params)
    assert response.status_code == 400
    assert "At most 2 positions" in response.json()["errors"][0]["message"]


async def test_no_checkpoint_yet_is_a_clear_404(db: AsyncEngine, gateway_url: str) -> None:
    async with serving(make_settings(gateway_url), gateway_url) as api:
        response = await api.http.get("/audit/checkpoint")
    assert response.status_code == 404
    assert "nothing is sealed yet" in response.json()["errors"][0]["message"]


# -- keys, and a rotation -----------------------------------------------------------------------


async def test_a_rotated_key_keeps_the_old_one_listed_and_both_histories_verify(
    grown: AsyncEngine, gateway_url: str
) -> None:
    rotated, rotated_seed = Signer.generate()
    new_public = base64.b64decode(rotated.verifier.public_base64)
    await write_events(grown, 10, request="after-rotation")
    await seal_until_current(grown, rotated)
    settings = make_settings(
        gateway_url,
        audit_signing_key=rotated_seed,
        audit_verify_key=f"{rotated.verifier.public_base64},{TEST_SIGNER.verifier.public_base64}",
    )
    async with serving(settings, gateway_url) as api:
        listed = (await api.http.get("/audit/keys")).json()
        old_note, new_note = await note_of(api, 600), await note_of(api)
        proof = await consistency(api, 600, 610)

    assert listed["origin"] == ORIGIN
    old, new = listed["keys"]
    assert (old["current"], new["current"]) == (False, True)
    assert base64.b64decode(old["publicKey"]) == PUBLIC
    assert base64.b64decode(new["publicKey"]) == new_public
    assert old["validUntil"] == new["validFrom"] is not None
    assert new["validUntil"] is None
    assert old["lastCheckpoint"] < new["firstCheckpoint"]
    # The vkey is C2SP's: name+keyid+base64(0x01 || key).
    name, key_id, encoded = new["vkey"].split("+", 2)
    assert name == ORIGIN
    assert bytes.fromhex(key_id) == note_key_id(ORIGIN, 0x01, new_public)
    assert base64.b64decode(encoded) == b"\x01" + new_public

    old_size, old_root = open_checkpoint(old_note, ORIGIN, PUBLIC)
    new_size, new_root = open_checkpoint(new_note, ORIGIN, new_public)
    with pytest.raises(ValueError, match="not signed"):
        open_checkpoint(new_note, ORIGIN, PUBLIC)
    with pytest.raises(ValueError, match="not signed"):
        open_checkpoint(old_note, ORIGIN, new_public)
    assert consistent(old_size, new_size, old_root, new_root, proof)
    # `tillit audit verify` trusts both keys when told to, and names the unknown one when not.
    assert (await verify(grown, TEST_SIGNER)).ok is False
    from gateway.audit.verify import verify_log

    async with grown.connect() as connection:
        report = await verify_log(connection, [rotated.verifier, TEST_SIGNER.verifier])
    assert report.ok, report.problems


async def test_keys_lists_the_configured_key_before_it_signed_anything(
    db: AsyncEngine, gateway_url: str
) -> None:
    async with serving(make_settings(gateway_url), gateway_url) as api:
        listed = (await api.http.get("/audit/keys")).json()
    [key] = listed["keys"]
    assert key["current"] is True
    assert key["validFrom"] is None
    assert base64.b64decode(key["publicKey"]) == PUBLIC
    assert TEST_AUDIT_KEY not in str(listed)


# -- the tree survives tampering with its tiles -------------------------------------------------


async def test_verify_names_a_tile_that_differs_from_the_seals(grown: AsyncEngine) -> None:
    async with grown.begin() as connection:
        await connection.execute(
            text(
                # Every bit of the first byte flipped (writing a fixed byte left the tile as it
                # was whenever its hash began with that byte: one run in 256).
                "UPDATE audit_tiles SET hashes = set_byte(hashes, 0, get_byte(hashes, 0) # 255) "
                "WHERE level = 0 AND index = 1"
            )
        )

    report = await verify(grown)

    assert not report.ok
    assert "tile 0/1 of the tree differs from the seals" in report.problems[0]


async def test_the_sealer_rebuilds_a_tree_lost_or_never_built(grown: AsyncEngine) -> None:
    """After the upgrade that added the tree (migration 0007) there are seals and no tiles: the
    next seal builds them over every event sealed before."""
    leaves = await leaves_of(grown)
    async with grown.begin() as connection:
        await connection.execute(text("DELETE FROM audit_tiles"))
    await write_events(grown, 3, request=f"after-{uuid.uuid4()}")
    await seal_until_current(grown, TEST_SIGNER)

    leaves = await leaves_of(grown)
    async with grown.connect() as connection:
        note = await connection.scalar(
            text("SELECT note FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
        )
    assert open_checkpoint(note, ORIGIN, PUBLIC) == (603, mth(leaves))
    assert (await verify(grown)).ok


async def test_verify_names_a_checkpoint_whose_note_was_rewritten(grown: AsyncEngine) -> None:
    """A superuser who re-signs nothing but swaps a checkpoint's tree root is caught."""
    from tests.conftest import lift_audit_guards, restore_audit_guards

    async with grown.begin() as connection:
        partitions = await lift_audit_guards(connection)
        await connection.execute(
            text(
                "UPDATE audit_checkpoints SET tree_root = :root WHERE id = "
                "(SELECT min(id) FROM audit_checkpoints WHERE event_count > 0)"
            ),
            {"root": bytes(32)},
        )
        await restore_audit_guards(connection, partitions)

    report = await verify(grown)

    assert not report.ok
    assert "tree root differs from the tree of the seals" in report.problems[0]


async def test_audit_keys_prints_the_keys(grown: AsyncEngine, cli_env: object) -> None:
    from tests.conftest import tillit

    table = await tillit("audit", "keys")
    listed = await tillit("audit", "keys", "--json")

    assert table.exit_code == 0, table.output
    assert TEST_SIGNER.key_id in table.output
    assert "witnesses: none configured" in table.output
    assert '"current": true' in listed.output
    assert TEST_SIGNER.verifier.public_base64 in listed.output


@pytest.mark.parametrize(
    ("route", "params"),
    [
        ("/audit/checkpoint", {"size": "9223372036854775808"}),
        ("/audit/checkpoint", {"size": "9999999999999999999"}),
        ("/audit/proof/consistency", {"from": "1", "to": "9223372036854775808"}),
        ("/audit/proof/inclusion", {"size": "9223372036854775808", "position": "1"}),
    ],
)
async def test_sizes_past_2_63_are_400_not_a_database_error(
    public: Api, route: str, params: dict[str, str]
) -> None:
    response = await public.http.get(route, params=params)
    assert response.status_code == 400
    assert "below 2^63" in response.json()["errors"][0]["message"]
