"""Checking the log from outside, with only what it publishes. Witnesses: two of them cosign the
log as it grows; a fork (another history under the same key) and a rollback (a restored backup)
make a witness refuse, say why and cosign nothing. The cosignatures are checked with the verifier
written from the C2SP texts (tests/tlog.py). And `tillit audit verify --remote`: an export
against the published keys, checkpoint and proofs, with no database."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import remote
from gateway.audit.sealer import seal_until_current
from gateway.notes import NoteKey, WitnessKey
from gateway.store import migrate
from gateway.store.db import create_engine
from tests.conftest import TEST_SIGNER, Api, listening, make_settings, serving, tillit
from tests.helpers import write_events
from tests.tlog import cosigned, open_checkpoint

ORIGIN = TEST_SIGNER.origin
PUBLIC = base64.b64decode(TEST_SIGNER.verifier.public_base64)
ALICE = WitnessKey.generate("dpo.example.org/alice")
BOB = WitnessKey.generate("auditor.example.net/bob")
WITNESSES = f"{ALICE.public.vkey},{BOB.public.vkey}"


@pytest.fixture
async def log(db: AsyncEngine, gateway_url: str) -> AsyncIterator[Api]:
    await write_events(db, 40, request="first")
    await seal_until_current(db, TEST_SIGNER)
    async with serving(make_settings(gateway_url, audit_witnesses=WITNESSES), gateway_url) as api:
        yield api


async def witness(api: Api, key: WitnessKey, state: Path) -> remote.Witnessed:
    return await remote.witness_once(remote.LogClient(api.http), key, state)


async def grow(db: AsyncEngine, count: int) -> None:
    await write_events(db, count, request=f"grow-{count}")
    await seal_until_current(db, TEST_SIGNER)


async def test_two_witnesses_cosign_the_log_as_it_grows(
    log: Api, db: AsyncEngine, tmp_path: Path
) -> None:
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"

    first = await witness(log, ALICE, alice)
    await witness(log, BOB, bob)
    note = (await log.http.get("/audit/checkpoint")).text

    assert first.accepted == ["dpo.example.org/alice"]
    # First run: the witness pins the log's published key.
    assert first.pinned == [NoteKey.of_log(ORIGIN, TEST_SIGNER.verifier).vkey]
    assert open_checkpoint(note, ORIGIN, PUBLIC)[0] == 40
    assert cosigned(note, ALICE.name, ALICE.public.public) is not None
    assert cosigned(note, BOB.name, BOB.public.public) is not None
    # A cosignature is bound to its witness's key: Bob's line does not verify as Alice's.
    assert cosigned(note.replace(BOB.name, ALICE.name), ALICE.name, BOB.public.public) is None

    await grow(db, 300)
    again = await witness(log, ALICE, alice)
    note = (await log.http.get("/audit/checkpoint")).text
    size, root = open_checkpoint(note, ORIGIN, PUBLIC)

    assert (again.previous_size, again.head.size, size) == (40, 340, 340)
    assert cosigned(note, ALICE.name, ALICE.public.public) is not None
    # Bob has not seen 340 yet: his cosignature stays on the checkpoint of 40.
    assert cosigned(note, BOB.name, BOB.public.public) is None
    old = (await log.http.get("/audit/checkpoint", params={"size": 40})).text
    assert cosigned(old, BOB.name, BOB.public.public) is not None
    state = json.loads(alice.read_text())
    assert (state["size"], base64.b64decode(state["root"])) == (340, root)


async def test_the_gateway_keeps_only_cosignatures_it_can_check(log: Api, tmp_path: Path) -> None:
    stranger = WitnessKey.generate("stranger.example/w")
    await witness(log, ALICE, tmp_path / "alice.json")
    note = (await log.http.get("/audit/checkpoint")).text

    with pytest.raises(remote.Unreachable, match="No cosignature by a witness this log knows"):
        await witness(log, stranger, tmp_path / "stranger.json")
    # A cosignature line altered in transit.
    lines = note.splitlines(keepends=True)
    forged = "".join(lines[:-1]) + lines[-1][:-6] + "AAAA=\n"
    response = await log.http.post("/audit/cosignature", content=forged.encode())
    assert response.status_code == 400
    # A checkpoint this log never signed, cosigned by a known witness.
    foreign = ALICE.cosign(f"{ORIGIN}\n41\n{base64.b64encode(bytes(32)).decode()}\n", 1)
    body = f"{ORIGIN}\n41\n{base64.b64encode(bytes(32)).decode()}\n\n{foreign.line}"
    response = await log.http.post("/audit/cosignature", content=body.encode())
    assert response.status_code == 400
    assert "Not a checkpoint of this log" in response.json()["errors"][0]["message"]
    # Too large, and not UTF-8.
    response = await log.http.post("/audit/cosignature", content=b"x" * 20_000)
    assert response.status_code == 413
    response = await log.http.post("/audit/cosignature", content=b"\xff\xfe")
    assert response.status_code == 400


def cosigned_by_alice(note: str, *timestamps: int) -> str:
    """The log's checkpoint (its cosignature lines dropped) with Alice's line for each time."""
    text = note.split("\n\n", 1)[0] + "\n"
    signature = note.split("\n\n", 1)[1].splitlines()[0]
    lines = "".join(ALICE.cosign(text, t).line for t in timestamps)
    return f"{text}\n{signature}\n{lines}"


async def test_cosignatures_with_impossible_times_are_refused_and_twins_kept_once(
    log: Api, db: AsyncEngine
) -> None:
    note = (await log.http.get("/audit/checkpoint")).text
    now = int(time.time())

    refused = {}
    for name, body in {
        "1970": cosigned_by_alice(note, 1),
        "2^40": cosigned_by_alice(note, 1 << 40),
        "2^62": cosigned_by_alice(note, 1 << 62),
        "two different": cosigned_by_alice(note, now, now - 1),
    }.items():
        response = await log.http.post("/audit/cosignature", content=body.encode())
        refused[name] = (response.status_code, response.json()["errors"][0]["message"])
    twice = await log.http.post(
        "/audit/cosignature", content=cosigned_by_alice(note, now, now).encode()
    )

    assert refused["1970"] == (
        400,
        f"The cosignature by {ALICE.name} is older than the checkpoint it signs.",
    )
    assert refused["2^40"] == (400, f"The cosignature by {ALICE.name} is from the future.")
    assert refused["2^62"] == (400, f"The cosignature by {ALICE.name} is from the future.")
    assert refused["two different"] == (
        400,
        f"{ALICE.name} cosigned this checkpoint more than once.",
    )
    assert twice.status_code == 200
    assert twice.json()["accepted"] == [ALICE.name]
    published = (await log.http.get("/audit/checkpoint")).text
    assert published.count(f"— {ALICE.name} ") == 1


@pytest.fixture
async def other_history(empty_database_url: str) -> AsyncIterator[tuple[AsyncEngine, str]]:
    """Another database holding another history, signed with the same key under the same name:
    what a log that shows different people different histories would serve."""
    settings = make_settings(empty_database_url)
    engine = create_engine(empty_database_url, settings)
    await migrate.upgrade(engine)
    yield engine, empty_database_url
    await engine.dispose()


async def test_a_fork_makes_the_witness_refuse(
    log: Api, db: AsyncEngine, other_history: tuple[AsyncEngine, str], tmp_path: Path
) -> None:
    state = tmp_path / "alice.json"
    await witness(log, ALICE, state)
    before = state.read_text()
    other, url = other_history

    # Same size, another root.
    await write_events(other, 40, request="forked")
    await seal_until_current(other, TEST_SIGNER)
    async with serving(make_settings(url, audit_witnesses=WITNESSES), url) as forked:
        with pytest.raises(remote.Refused, match="fork: the log shows two different trees of 40"):
            await witness(forked, ALICE, state)
        # Larger, but not an extension of what the witness saw.
        await grow(other, 10)
        with pytest.raises(remote.Refused, match="does not extend the tree of 40"):
            await witness(forked, ALICE, state)

    assert state.read_text() == before
    # The true log grew append-only: the witness goes on cosigning it.
    await grow(db, 5)
    assert (await witness(log, ALICE, state)).head.size == 45


async def test_a_rollback_makes_the_witness_refuse(
    log: Api, db: AsyncEngine, other_history: tuple[AsyncEngine, str], tmp_path: Path
) -> None:
    state = tmp_path / "bob.json"
    await grow(db, 20)
    await witness(log, BOB, state)
    # The log restored from an older backup: 30 events.
    other, url = other_history
    await write_events(other, 30, request="older")
    await seal_until_current(other, TEST_SIGNER)

    async with serving(make_settings(url, audit_witnesses=WITNESSES), url) as restored:
        with pytest.raises(remote.Refused, match="rollback: the log now shows a tree of 30"):
            await witness(restored, BOB, state)
    assert json.loads(state.read_text())["size"] == 60


@pytest.fixture
async def gateway(log: Api, gateway_url: str) -> AsyncIterator[str]:
    """The gateway on a real port, for the command line."""
    settings = make_settings(gateway_url, audit_witnesses=WITNESSES)
    async with listening(settings, gateway_url) as url:
        yield url


async def test_the_witness_command(gateway: str, tmp_path: Path) -> None:
    key_file = tmp_path / "alice.key"
    made = await tillit("audit", "witness-keygen", "dpo.example.org/cli", "--out", str(key_file))
    assert made.exit_code == 0, made.output
    assert key_file.stat().st_mode & 0o777 == 0o600
    state = tmp_path / "state.json"

    # Not configured at the gateway: cosigned locally, refused by the gateway (exit 2).
    result = await tillit(
        "audit", "witness", "--url", gateway, "--key", str(key_file), "--state", str(state)
    )
    assert result.exit_code == 2, result.output
    assert "No cosignature by a witness this log knows" in result.output

    alice_key = tmp_path / "real.key"
    alice_key.write_text(ALICE.skey + "\n")
    result = await tillit(
        "audit", "witness", "--url", gateway, "--key", str(alice_key), "--state", str(state)
    )
    assert result.exit_code == 0, result.output
    assert "accepted: dpo.example.org/alice" in result.output
    # Another witness key on the same state: the log is the same, so it cosigns again.
    result = await tillit(
        "audit",
        "witness",
        "--url",
        gateway,
        "--key",
        str(tmp_path / "missing.key"),
        "--state",
        str(state),
    )
    assert result.exit_code == 2
    assert "cannot read" in result.output


# -- verify --remote ----------------------------------------------------------------------------


async def _export(tmp_path: Path, fmt: str) -> Path:
    out_file = tmp_path / f"log.{fmt}"
    made = await tillit(
        "audit", "export", "--from", "2000-01-01", "--to", "2100-01-01",
        "--format", fmt, "--out", str(out_file),
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    return out_file


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_verify_remote_checks_an_export_against_the_published_tree(
    gateway: str, cli_env: object, tmp_path: Path, fmt: str
) -> None:
    exported = await _export(tmp_path, fmt)

    result = await tillit("audit", "verify", "--remote", gateway, "--export", str(exported))

    assert result.exit_code == 0, result.output
    assert "every row" in result.output
    assert "in the log's signed tree of 40 events" in result.output
    if fmt == "jsonl":
        assert "40 recomputed from their fields" in result.output


async def test_verify_remote_needs_no_database_and_no_settings(
    gateway: str, cli_env: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = await _export(tmp_path, "jsonl")
    for name in ("DATABASE_URL", "TILLIT_AUDIT_SIGNING_KEY", "TILLIT_MEMBER_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    pinned = NoteKey.of_log(ORIGIN, TEST_SIGNER.verifier).vkey

    result = await tillit(
        "audit", "verify", "--remote", gateway, "--export", str(exported), "--log-key", pinned
    )

    assert result.exit_code == 0, result.output


async def test_verify_remote_names_a_row_whose_fields_were_changed(
    gateway: str, cli_env: object, tmp_path: Path
) -> None:
    exported = await _export(tmp_path, "jsonl")
    lines = exported.read_text().splitlines()
    row = json.loads(lines[4])
    row["purpose"] = "marketing"
    lines[4] = json.dumps(row, sort_keys=True, ensure_ascii=False)
    exported.write_text("\n".join(lines) + "\n")

    result = await tillit("audit", "verify", "--remote", gateway, "--export", str(exported))

    assert result.exit_code == 1
    assert "SHA-256 differs from the manifest" in result.output


async def test_verify_remote_refuses_an_export_the_log_never_sealed(
    gateway: str, cli_env: object, db: AsyncEngine, tmp_path: Path
) -> None:
    """A database changed behind the log's back (an event and its seal rewritten together, so the
    export is consistent and freshly signed) is caught by the published tree."""
    from sqlalchemy import text

    from gateway.audit.sealing import EVENT_COLUMNS, event_hash
    from tests.conftest import lift_audit_guards, restore_audit_guards

    async with db.begin() as connection:
        partitions = await lift_audit_guards(connection)
        await connection.execute(
            text("UPDATE access_events SET purpose = 'marketing' WHERE id = 7")
        )
        row = (
            (
                await connection.execute(
                    text(f"SELECT {', '.join(EVENT_COLUMNS)} FROM access_events WHERE id = 7")
                )
            )
            .mappings()
            .one()
        )
        await connection.execute(
            text("UPDATE audit_seals SET event_hash = :hash WHERE event_id = 7"),
            {"hash": event_hash(row)},
        )
        await restore_audit_guards(connection, partitions)
    exported = await _export(tmp_path, "jsonl")

    result = await tillit("audit", "verify", "--remote", gateway, "--export", str(exported))

    assert result.exit_code == 1
    assert "is not in the log's signed tree of" in result.output
    assert "inclusion proof fails" in result.output
