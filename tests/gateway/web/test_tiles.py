"""GET /audit/tile/<L>/<N>[.p/<W>]: the log's hash tiles as C2SP tlog-tiles serves them, checked
against that text with this file's own path encoding and RFC 6962 hashing (tests/tlog.py), and
the public routes' rate per client address."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.remote import LogClient
from gateway.audit.sealer import seal_until_current
from gateway.audit.tree import parse_tile_path, tile_path
from gateway.web import transparency as transparency_routes
from tests.conftest import TEST_SIGNER, Api, add_client, make_settings, serving
from tests.helpers import leaves_of, write_events
from tests.tlog import included, mth, open_checkpoint

ORIGIN = TEST_SIGNER.origin
PUBLIC = TEST_SIGNER.verifier.raw


def spec_path(level: int, index: int, width: int | None = None) -> str:
    """tlog-tiles: "<N> is the index of the tile within the level. It MUST be a non-negative
    integer encoded into zero-padded 3-digit path elements. All but the last path element MUST
    begin with an x." Partial tiles end in `.p/<W>`."""
    digits = str(index)
    digits = digits.zfill(len(digits) + (-len(digits)) % 3)
    elements = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    path = f"{level}/" + "/".join(["x" + e for e in elements[:-1]] + [elements[-1]])
    return path if width is None else f"{path}.p/{width}"


@pytest.fixture
async def grown(db: AsyncEngine) -> AsyncEngine:
    """600 events: level-0 tiles 0 and 1 full, tile 2 at 88; level 1 tile 0 at 2."""
    for count in (300, 300):
        await write_events(db, count, request=f"r{count}")
        await seal_until_current(db, TEST_SIGNER)
    return db


@pytest.fixture
async def public(grown: AsyncEngine, gateway_url: str) -> AsyncIterator[Api]:
    async with serving(make_settings(gateway_url), gateway_url) as client:
        yield client


async def tile(api: Api, path: str) -> bytes:
    response = await api.http.get(f"/audit/tile/{path}")
    assert response.status_code == 200, (path, response.text)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    return response.content


def hashes(data: bytes) -> list[bytes]:
    return [data[i : i + 32] for i in range(0, len(data), 32)]


def test_paths_are_spelled_as_the_specification_spells_them() -> None:
    assert spec_path(0, 1234067) == "0/x001/x234/067"  # the specification's example
    for index in (0, 5, 999, 1000, 1234067, 10**9, 2**63 - 1):
        for width in (None, 1, 255):
            spelled = spec_path(3, index, width)
            assert tile_path((3, index), width or 256) == spelled
            assert parse_tile_path(spelled) == ((3, index), width or 256)
    for wrong in (
        "0/0",
        "0/00",
        "00/000",
        "0/x000/000",
        "0/000.p/0",
        "0/000.p/256",
        "0/000.p/08",
        "64/000",
        "0/000/",
        "0/x1/000",
        "0/x001",
        "-1/000",
        "0/x999/x999/x999/x999/x999/x999/x999/999",
    ):
        assert parse_tile_path(wrong) is None, wrong


async def test_the_tiles_hold_the_leaves_and_prove_the_signed_root(
    public: Api, grown: AsyncEngine
) -> None:
    leaves = await leaves_of(grown)
    size, root = open_checkpoint((await public.http.get("/audit/checkpoint")).text, ORIGIN, PUBLIC)
    assert size == len(leaves) == 600

    level0 = [
        hashes(await tile(public, spec_path(0, 0))),
        hashes(await tile(public, spec_path(0, 1))),
        hashes(await tile(public, spec_path(0, 2, 88))),
    ]
    level1 = hashes(await tile(public, spec_path(1, 0, 2)))

    assert [h for t in level0 for h in t] == leaves
    assert level1 == [mth(leaves[:256]), mth(leaves[256:512])]
    assert mth([h for t in level0 for h in t]) == root
    # A partial tile of a full one is its first W hashes, for ever.
    assert hashes(await tile(public, spec_path(0, 1, 10))) == leaves[256:266]


async def test_tiles_no_checkpoint_holds_and_entry_bundles_are_404(public: Api) -> None:
    for path in (
        spec_path(0, 2),  # not full yet
        spec_path(0, 2, 89),  # wider than the tree
        spec_path(0, 3, 1),
        spec_path(2, 0, 1),
        "0/00",  # not spelled as the specification spells it
        "entries/000",
        "entries/000.p/5",
    ):
        response = await public.http.get(f"/audit/tile/{path}")
        assert response.status_code == 404, path
        assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    entries = await public.http.get("/audit/tile/entries/000")
    assert "Entry bundles are not published" in entries.json()["errors"][0]["message"]


async def test_a_client_proves_inclusion_from_the_tiles_alone(
    public: Api, grown: AsyncEngine
) -> None:
    leaves = await leaves_of(grown)
    size, root = open_checkpoint((await public.http.get("/audit/checkpoint")).text, ORIGIN, PUBLIC)
    client = LogClient(public.http)

    positions = [1, 256, 257, 300, 512, 513, 600]
    proofs = await client.inclusion(size, positions)

    for position in positions:
        assert included(position - 1, size, leaves[position - 1], proofs[position], root)


async def test_an_inclusion_request_asks_for_at_most_two_positions(public: Api) -> None:
    response = await public.http.get(
        "/audit/proof/inclusion", params=[("size", 600), *(("position", p) for p in range(1, 4))]
    )
    assert response.status_code == 400
    assert "At most 2 positions" in response.json()["errors"][0]["message"]


async def test_the_public_routes_have_a_rate_per_address_apart_from_clients(
    grown: AsyncEngine, gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[float] = []

    async def hold(seconds: float) -> None:  # the refusal's delay, recorded instead of waited
        held.append(seconds)

    monkeypatch.setattr(transparency_routes, "hold_refusal", hold)
    app_key = (await add_client(grown, name="shop")).key
    limited = make_settings(
        gateway_url, public_rate_limit_per_second=0.2, public_rate_limit_burst=2
    )
    async with serving(limited, gateway_url) as api:
        answers = [await api.http.get(f"/audit/tile/{spec_path(0, 0)}") for _ in range(4)]
        keys = await api.http.get("/audit/keys")
        graphql = await api.graphql("{ purposes { key } }", token=app_key)

    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert answers[3].status_code == 429
    assert int(answers[3].headers["retry-after"]) >= 1
    assert answers[3].json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert keys.status_code == 429  # the same bucket for every public route
    assert graphql.status_code == 200  # the app's own bucket
    # Each refusal is held a second before it is sent: a flood's loop slows to one a second.
    assert held == [transparency_routes.REFUSAL_DELAY_SECONDS] * 3


async def test_the_public_rate_limit_is_on_by_default_and_can_be_turned_off(
    grown: AsyncEngine, gateway_url: str
) -> None:
    assert make_settings(gateway_url).public_rate_limit_per_second > 0
    off = make_settings(gateway_url, public_rate_limit_per_second=0, public_rate_limit_burst=1)
    async with serving(off, gateway_url) as api:
        statuses = {(await api.http.get("/audit/keys")).status_code for _ in range(5)}
    assert statuses == {200}
