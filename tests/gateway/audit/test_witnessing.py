"""The log asks witnesses to cosign (C2SP tlog-witness add-checkpoint). The witness here is written
in this file from the protocol text, checking with tests/tlog.py (the verifier written from the C2SP
texts), not with gateway's code: old size line, proof lines, empty line, checkpoint; 409 with
`text/x.tlog.size`; 422 for a proof that does not verify; cosignature lines on success."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.audit import witnessing
from gateway.audit.sealer import seal_until_current
from gateway.audit.witness_server import witness_app
from gateway.audit.witnessing import Witness, ask, ask_all
from gateway.notes import NoteKey, WitnessKey
from gateway.store.db import raw_of
from tests.conftest import TEST_SIGNER, Api, make_settings, serving
from tests.helpers import write_events
from tests.tlog import consistent, cosigned, open_checkpoint

ORIGIN = TEST_SIGNER.origin
PUBLIC = TEST_SIGNER.verifier.raw
ALICE = WitnessKey.generate("dpo.example.org/alice")


class ProtocolWitness:
    """add-checkpoint as the text says it, for one log; `size`/`root` its latest cosigned."""

    def __init__(self, key: WitnessKey) -> None:
        self.key = key
        self.size = 0
        self.root = b""
        self.bodies: list[str] = []
        self.lock = asyncio.Lock()

    async def add_checkpoint(self, request: Request) -> Response:
        body = (await request.body()).decode()
        self.bodies.append(body)
        head, _, checkpoint = body.partition("\n\n")
        lines = head.split("\n")
        assert lines[0].startswith("old "), body
        old = int(lines[0][4:])
        assert lines[0][4:] == str(old)  # ASCII decimal, no leading zeroes
        proof = [base64.b64decode(line) for line in lines[1:]]
        assert len(proof) <= 63
        try:
            size, root = open_checkpoint(checkpoint, ORIGIN, PUBLIC)
        except (AssertionError, ValueError):
            return PlainTextResponse("bad signature\n", status_code=403)
        if old > size:
            return PlainTextResponse("old size above size\n", status_code=400)
        async with self.lock:  # check and persist at once
            if old != self.size:
                return PlainTextResponse(
                    f"{self.size}\n", status_code=409, media_type="text/x.tlog.size"
                )
            if old == 0 and proof:
                return PlainTextResponse("a proof from 0\n", status_code=422)
            if old == size and root != self.root:
                return PlainTextResponse("another root\n", status_code=409)
            if 0 < old < size and not consistent(old, size, self.root, root, proof):
                return PlainTextResponse("not consistent\n", status_code=422)
            self.size, self.root = size, root
        text_ = checkpoint.split("\n\n", 1)[0] + "\n"
        return PlainTextResponse(self.key.cosign(text_, int(time.time())).line)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/add-checkpoint", self.add_checkpoint, methods=["POST"])])


def client_of(app: Starlette, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), timeout=httpx.Timeout(10.0, **timeouts)
    )


@pytest.fixture
async def log(db: AsyncEngine) -> AsyncEngine:
    await write_events(db, 40, request="first")
    await seal_until_current(db, TEST_SIGNER)
    return db


@pytest.fixture
async def public(log: AsyncEngine, gateway_url: str) -> AsyncIterator[Api]:
    witnesses = ALICE.public.vkey
    async with serving(make_settings(gateway_url, audit_witnesses=witnesses), gateway_url) as api:
        yield api


async def ask_once(engine: AsyncEngine, http: httpx.AsyncClient, witness: Witness) -> int | None:
    async with engine.begin() as connection:
        return await ask(http, await raw_of(connection), witness, TEST_SIGNER)


async def grow(engine: AsyncEngine, count: int) -> None:
    await write_events(engine, count, request=f"grow-{count}")
    await seal_until_current(engine, TEST_SIGNER)


async def test_the_log_pushes_each_checkpoint_and_keeps_the_cosignature(
    log: AsyncEngine, public: Api
) -> None:
    witness = ProtocolWitness(ALICE)
    target = Witness(ALICE.public, "http://witness.test")
    async with client_of(witness.app()) as http:
        first = await ask_once(log, http, target)
        await grow(log, 300)
        second = await ask_once(log, http, target)
        again = await ask_once(log, http, target)  # nothing new: nothing sent

    assert (first, second, again) == (40, 340, 340)
    assert len(witness.bodies) == 2
    assert witness.bodies[0].startswith("old 0\n\n")
    assert witness.bodies[1].startswith("old 40\n")
    assert len(witness.bodies[1].split("\n\n")[0].split("\n")) > 1  # the proof's lines
    note = (await public.http.get("/audit/checkpoint")).text
    assert cosigned(note, ALICE.name, ALICE.public.public) is not None
    old = (await public.http.get("/audit/checkpoint", params={"size": 40})).text
    assert cosigned(old, ALICE.name, ALICE.public.public) is not None


async def test_a_witness_that_knows_more_than_the_log_remembers_is_asked_from_its_size(
    log: AsyncEngine, public: Api
) -> None:
    """The log lost its record (or never had it): the 409's size is where it asks from."""
    witness = ProtocolWitness(ALICE)
    target = Witness(ALICE.public, "http://witness.test")
    async with client_of(witness.app()) as http:
        await ask_once(log, http, target)
        async with log.begin() as connection:
            await connection.execute(text("DELETE FROM audit_cosignatures"))
        await grow(log, 300)
        size = await ask_once(log, http, target)

    assert size == 340
    assert [b.split("\n", 1)[0] for b in witness.bodies] == ["old 0", "old 0", "old 40"]
    note = (await public.http.get("/audit/checkpoint")).text
    assert cosigned(note, ALICE.name, ALICE.public.public) is not None


async def test_refusals_and_hostile_answers_keep_nothing_and_raise_nothing(
    log: AsyncEngine, public: Api
) -> None:
    target = Witness(ALICE.public, "http://witness.test")

    async def refuse(request: Request) -> Response:
        return PlainTextResponse("not consistent\n", status_code=422)

    async def huge(request: Request) -> Response:
        return PlainTextResponse("— " + "A" * 100_000 + "\n")

    async def redirect(request: Request) -> Response:
        return RedirectResponse("http://elsewhere.test/add-checkpoint", status_code=307)

    async def forged(request: Request) -> Response:
        other = WitnessKey.generate(ALICE.name)  # Alice's name, another key
        body = (await request.body()).decode().partition("\n\n")[2]
        return PlainTextResponse(other.cosign(body.split("\n\n")[0] + "\n", int(time.time())).line)

    async def ahead(request: Request) -> Response:
        return PlainTextResponse("99999\n", status_code=409, media_type="text/x.tlog.size")

    outcomes = []
    for handler in (refuse, huge, redirect, forged, ahead):
        app = Starlette(routes=[Route("/add-checkpoint", handler, methods=["POST"])])
        async with client_of(app) as http:
            async with log.connect() as connection:
                try:
                    outcomes.append(await ask(http, await raw_of(connection), target, TEST_SIGNER))
                except Exception as exc:  # only ask_all swallows: here each way is seen
                    outcomes.append(type(exc).__name__)
            await ask_all(log, [target], TEST_SIGNER, http)  # never raises

    assert outcomes == [None, "ValueError", None, "CosignatureRefused", None]
    async with log.connect() as connection:
        kept = await connection.scalar(text("SELECT count(*) FROM audit_cosignatures"))
    assert kept == 0


async def test_a_slow_witness_delays_only_its_own_cosignature(log: AsyncEngine) -> None:
    bob = WitnessKey.generate("auditor.example.net/bob")
    fast = ProtocolWitness(bob)
    never = asyncio.Event()

    async def stall(request: Request) -> Response:
        await never.wait()
        return PlainTextResponse("")

    async def route(request: Request) -> Response:
        if request.url.hostname == "slow.test":
            return await stall(request)
        return await fast.add_checkpoint(request)

    app = Starlette(routes=[Route("/add-checkpoint", route, methods=["POST"])])
    witnesses = [
        Witness(ALICE.public, "http://slow.test"),
        Witness(bob.public, "http://fast.test"),
    ]
    async with client_of(app) as http:
        async with asyncio.timeout(20):
            task = asyncio.create_task(ask_all(log, witnesses, TEST_SIGNER, http))
            for _ in range(200):  # until the fast one's cosignature is kept (bounded)
                async with log.connect() as connection:
                    kept = await connection.scalar(
                        text("SELECT count(*) FROM audit_cosignatures WHERE witness = :w"),
                        {"w": bob.name},
                    )
                if kept:
                    break
                await asyncio.sleep(0.05)
            task.cancel()

    assert kept == 1


def test_witnesses_are_those_with_a_submission_url() -> None:
    bob = WitnessKey.generate("auditor.example.net/bob")
    settings = make_settings(
        "postgresql://x/y",
        audit_witnesses=f"{ALICE.public.vkey},{bob.public.vkey}",
        audit_witness_urls=f"{ALICE.name}=https://alice.example/w/",
    )

    assert witnessing.witnesses_of(settings.witness_keys, settings.witness_urls) == [
        Witness(ALICE.public, "https://alice.example/w")
    ]
    with pytest.raises(ValueError, match="TILLIT_AUDIT_WITNESS_URLS"):
        make_settings("postgresql://x/y", audit_witness_urls="alice=ftp://nope")


async def test_tillits_log_and_tillits_witness_speak_the_protocol_to_each_other(
    log: AsyncEngine, public: Api, tmp_path: Path
) -> None:
    """`tillit audit witness-serve`'s app, pushed to by the log as the sealer's process does."""
    log_key = NoteKey.of_log(TEST_SIGNER.origin, TEST_SIGNER.verifier)
    app = witness_app(ALICE, [log_key], tmp_path / "alice.json")
    target = Witness(ALICE.public, "http://witness.test")
    async with client_of(app) as http:
        first = await ask_once(log, http, target)
        await grow(log, 300)
        second = await ask_once(log, http, target)

    assert (first, second) == (40, 340)
    note = (await public.http.get("/audit/checkpoint")).text
    assert cosigned(note, ALICE.name, ALICE.public.public) is not None
