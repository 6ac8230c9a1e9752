"""Asking witnesses to cosign, as C2SP tlog-witness has it: the log sends each configured witness
`add-checkpoint` (the size that witness last cosigned, the consistency proof from it, the signed
checkpoint) and keeps the cosignatures it answers with.

Runs in the sealer's process (`tillit sealer`, which `tillit serve` starts), one process per
database at a time (an advisory lock), every seal interval. Each witness is asked on its own with
connect and read deadlines, a bounded answer and no redirects: a slow or hostile witness delays
only its own cosignature.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import tiles, transparency
from gateway.notes import NoteKey
from gateway.signing import Signer
from gateway.store.db import Raw, raw_of

log = structlog.get_logger("tillit.witnessing")

# One process per database asks the witnesses (an arbitrary constant, "TILLWITN").
WITNESS_LOCK = 0x54494C4C5749544E
CONNECT_SECONDS = 5.0
READ_SECONDS = 10.0
# A witness answers a few signature lines; more is not an answer.
MAX_ANSWER_BYTES = 16_384
SIZE_MEDIA = "text/x.tlog.size"


@dataclass(frozen=True, slots=True)
class Witness:
    """A witness: its cosignature key, and the submission prefix it takes add-checkpoint at."""

    key: NoteKey
    url: str


def witnesses_of(keys: Sequence[NoteKey], urls: dict[str, str]) -> list[Witness]:
    """The configured witnesses that have a submission URL (the others cosign by posting)."""
    return [Witness(key, urls[key.name].rstrip("/")) for key in keys if key.name in urls]


async def _cosigned_size(raw: Raw, witness: Witness) -> int:
    row = await raw.fetchrow(
        "SELECT max(tree_size) AS size FROM audit_cosignatures WHERE witness = $1 AND key_id = $2",
        witness.key.name,
        witness.key.id,
    )
    return int(row["size"] or 0)


def _body(old: int, proof: Sequence[bytes], note: str) -> bytes:
    lines = [f"old {old}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n"]
    return ("".join(lines) + note).encode()


async def _post(http: httpx.AsyncClient, witness: Witness, body: bytes) -> tuple[int, str, str]:
    """The status, media type and (bounded) text of the witness's answer."""
    async with http.stream(
        "POST",
        f"{witness.url}/add-checkpoint",
        content=body,
        headers={"Content-Type": "text/plain; charset=utf-8"},
    ) as response:
        data = b""
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > MAX_ANSWER_BYTES:
                raise ValueError("the witness's answer is too large")
        media = response.headers.get("content-type", "").split(";")[0].strip()
        return response.status_code, media, data.decode("utf-8", errors="replace")


async def ask(http: httpx.AsyncClient, raw: Raw, witness: Witness, signer: Signer) -> int | None:
    """Ask one witness to cosign the newest checkpoint; the size it cosigned, or None.

    The size the log remembers for the witness may be behind (a cosignature not yet kept) or
    unknown: the witness's 409 says its size, and the log asks once more from there."""
    newest = await transparency.checkpoint_note(raw)
    if newest is None:
        return None
    size, note = newest
    old = await _cosigned_size(raw, witness)
    if old == size:
        return size  # its cosignature of the newest is kept already
    for _ in range(2):
        proof = await tiles.consistency_proof(raw, old, size) if 0 < old < size else []
        status, media, answer = await _post(http, witness, _body(old, proof, note))
        if status == 409 and media == SIZE_MEDIA and answer.strip().isdigit():
            stated = int(answer.strip())
            if stated > size:
                log.error("witness.ahead", witness=witness.key.name, size=size, witness_size=stated)
                return None
            old = stated
            continue
        if status != 200:
            log.warning("witness.refused", witness=witness.key.name, status=status, size=size)
            return None
        await transparency.add_cosignatures(raw, note + answer, [witness.key], signer)
        log.info("witness.cosigned", witness=witness.key.name, size=size)
        return size
    return None


async def ask_one(
    engine: AsyncEngine, witness: Witness, signer: Signer, http: httpx.AsyncClient
) -> None:
    """Ask one witness on a connection of its own; a failure is logged, never raised."""
    try:
        async with engine.begin() as connection:
            await ask(http, await raw_of(connection), witness, signer)
    except Exception as exc:  # the witness or the database away: the next round tries again
        log.warning("witness.failed", witness=witness.key.name, error_type=type(exc).__name__)


async def ask_all(
    engine: AsyncEngine, witnesses: Sequence[Witness], signer: Signer, http: httpx.AsyncClient
) -> None:
    """One round: every witness asked at once."""
    await asyncio.gather(*(ask_one(engine, w, signer, http) for w in witnesses))


async def run_witnessing(
    engine: AsyncEngine,
    witnesses: Sequence[Witness],
    signer: Signer,
    *,
    interval: float,
    stop: asyncio.Event,
) -> None:
    """Ask the witnesses every `interval` seconds while this process holds the witness lock."""
    if not witnesses:
        return
    timeout = httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        while not stop.is_set():
            try:
                async with engine.connect() as holder:
                    held = await holder.scalar(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": WITNESS_LOCK}
                    )
                    await holder.commit()
                    if held:
                        # A loop for each witness: a slow one delays only its own rounds.
                        await asyncio.gather(
                            *(
                                _keep_asking(engine, w, signer, http, interval, stop)
                                for w in witnesses
                            )
                        )
                    if held:
                        await holder.execute(
                            text("SELECT pg_advisory_unlock(:key)"), {"key": WITNESS_LOCK}
                        )
                        await holder.commit()
            except Exception as exc:  # the database away: try again after an interval
                log.warning("witnessing.failed", error_type=type(exc).__name__)
            await _wait(stop, interval)


async def _keep_asking(
    engine: AsyncEngine,
    witness: Witness,
    signer: Signer,
    http: httpx.AsyncClient,
    interval: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        await ask_one(engine, witness, signer, http)
        await _wait(stop, interval)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
