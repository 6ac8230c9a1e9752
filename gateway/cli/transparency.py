"""`tillit audit keys`, `tillit audit witness-keygen`, `tillit audit witness`, `tillit audit
witness-serve` and the remote form of `tillit audit verify`: the log's keys, and checking a log
from outside (gateway/audit/remote.py, gateway/audit/witness_server.py). The witnesses and the
remote check need no settings and no database: only the gateway's URL, or a port to be pushed to."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import remote, transparency
from gateway.cli.support import err, fail, out, run_with_database, settings_or_exit
from gateway.notes import NoteError, NoteKey, WitnessKey
from gateway.store.db import raw_of

T = TypeVar("T")
LogKeys = Annotated[
    list[str] | None,
    typer.Option(
        "--log-key",
        help="A log key to trust (vkey, `name+keyid+base64`, from `tillit audit keys`); "
        "repeatable. Default: the keys the log publishes (GET /audit/keys).",
    ),
]


def register(audit_app: typer.Typer) -> None:
    audit_app.command("keys")(keys)
    audit_app.command("witness-keygen")(witness_keygen)
    audit_app.command("witness")(witness)
    audit_app.command("witness-serve")(witness_serve)


def keys(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (as GET /audit/keys).")
    ] = False,
) -> None:
    """Every key the log's checkpoints were signed with, when each was in force, and the
    witnesses whose cosignatures the gateway keeps."""
    settings = settings_or_exit()

    async def work(engine: AsyncEngine) -> dict[str, object]:
        async with engine.connect() as connection:
            return await transparency.keys(
                await raw_of(connection), settings.audit_signer, settings.witness_keys
            )

    listed = run_with_database(work, settings=settings)
    if as_json:
        out.print_json(json.dumps(listed))
        return
    out.print(f"Keys of the log {listed['origin']}, oldest first:", highlight=False)
    for key in listed["keys"]:  # type: ignore[attr-defined]
        since = key["validFrom"] or "its first checkpoint"
        until = key["validUntil"] or ("now" if key["current"] else "?")
        span = (
            f"checkpoints {key['firstCheckpoint']} to {key['lastCheckpoint']}"
            if key["firstCheckpoint"]
            else "no checkpoint yet"
        )
        current = ", in force now" if key["current"] else ""
        out.print(f"  {key['keyId']}: from {since} to {until} ({span}){current}", highlight=False)
        out.print(f"    public key {key['publicKey']}", highlight=False)
        out.print(f"    vkey {key['vkey']}", highlight=False)
    witnesses = listed["witnesses"]
    out.print(
        "witnesses: "
        + (", ".join(w["name"] for w in witnesses) if witnesses else "none configured"),  # type: ignore[attr-defined]
        highlight=False,
    )


def witness_keygen(
    name: Annotated[
        str, typer.Argument(help="The witness's name, a schema-less URL: dpo.example.org/w1.")
    ],
    out_file: Annotated[
        Path, typer.Option("--out", help="Where to write the private key (mode 0600).")
    ],
) -> None:
    """Make a witness key (Ed25519, C2SP tlog-cosignature). Prints the verifier key to add to
    the gateway's TILLIT_AUDIT_WITNESSES."""
    try:
        key = WitnessKey.generate(name)
    except NoteError as exc:
        raise fail(str(exc)) from None
    if out_file.exists():
        raise fail(f"{out_file} exists; not overwriting a key")
    descriptor = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key.skey + "\n")
    out.print(key.public.vkey, highlight=False)
    err.print(f"Private key written to {out_file}. Give the line above to the gateway's operator.")


def _witness_key(value: str) -> WitnessKey:
    text = value if value.startswith("PRIVATE+KEY+") else _read(Path(value))
    try:
        return WitnessKey.parse(text)
    except NoteError as exc:
        raise fail(str(exc), code=2) from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}", code=2) from None


def _log_keys(values: list[str] | None) -> list[NoteKey] | None:
    if not values:
        return None
    try:
        return [NoteKey.parse(v) for v in values]
    except NoteError as exc:
        raise fail(f"--log-key: {exc}", code=2) from None


def _against(url: str, work: Callable[[remote.LogClient], Awaitable[T]]) -> T:
    """Run `work` with a client of the gateway at `url`, closed afterwards."""

    async def run() -> T:
        log = remote.LogClient.at(url)
        try:
            return await work(log)
        finally:
            await log.aclose()

    return asyncio.run(run())


def witness(
    url: Annotated[str, typer.Option(help="The gateway's base URL, e.g. https://tillit.example.")],
    key: Annotated[
        str, typer.Option(help="The witness's private key file (`tillit audit witness-keygen`).")
    ],
    state: Annotated[
        Path, typer.Option(help="The witness's state file: what it last cosigned (created).")
    ],
    log_key: LogKeys = None,
) -> None:
    """Cosign the log's newest checkpoint if it grew append-only from the last one this witness
    cosigned, and hand the cosignature to the gateway. Run it from cron, anywhere.

    Exit codes: 0 cosigned; 1 refused (a fork, a rollback, an unknown key: the log must be
    investigated; nothing was cosigned); 2 the gateway could not be asked or did not take the
    cosignature."""
    witness_key = _witness_key(key)
    trusted = _log_keys(log_key)

    try:
        done = _against(
            url, lambda log: remote.witness_once(log, witness_key, state, log_keys=trusted)
        )
    except remote.Refused as exc:
        raise fail(f"REFUSED to cosign: {exc}", code=1) from None
    except remote.Unreachable as exc:
        raise fail(str(exc), code=2) from None
    if done.pinned:
        err.print(
            "First run: trusting the log keys the gateway publishes now, pinned in the state "
            "file: " + ", ".join(done.pinned),
            highlight=False,
        )
    since = "first cosignature" if done.previous_size is None else f"from {done.previous_size}"
    out.print(
        f"cosigned {done.head.origin} at tree size {done.head.size} ({since}); "
        f"the gateway accepted: {', '.join(done.accepted) or 'nothing'}",
        highlight=False,
    )


def witness_serve(
    key: Annotated[
        str, typer.Option(help="The witness's private key file (`tillit audit witness-keygen`).")
    ],
    state: Annotated[
        Path,
        typer.Option(help="The witness's state file: what it last cosigned, the log keys pinned."),
    ],
    log_key: Annotated[
        list[str] | None,
        typer.Option(
            "--log-key",
            help="The log's key to trust (vkey, `name+keyid+base64`, from `tillit audit keys`); "
            "repeatable, all of one log. Pinned in the state file at the first cosignature; "
            "may be left out afterwards.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 7380,
) -> None:
    """Serve C2SP tlog-witness: the log POSTs its checkpoints to /add-checkpoint with a
    consistency proof, and gets this witness's cosignature if the checkpoint extends the last one
    cosigned. The pull form, `tillit audit witness`, keeps the same state file; do not run both
    on one file at once."""
    import uvicorn

    from gateway.audit.witness_server import Misconfigured, witness_app
    from gateway.logs import configure_logging

    witness_key = _witness_key(key)
    try:
        app = witness_app(witness_key, _log_keys(log_key) or [], state)
    except (Misconfigured, remote.Refused) as exc:
        raise fail(str(exc), code=2) from None
    # One line per cosignature and per refusal (a fork, a bad proof), readable in a terminal.
    configure_logging("info", "console")
    err.print(
        f"witness {witness_key.name} serving POST http://{host}:{port}/add-checkpoint "
        "(Ctrl-C stops)",
        highlight=False,
    )
    uvicorn.run(
        app, host=host, port=port, log_config=None, server_header=False, proxy_headers=False
    )


def verify_remote(url: str, export: Path, manifest: Path, log_key: list[str] | None) -> None:
    """`tillit audit verify --remote URL --export FILE`."""
    trusted = _log_keys(log_key)

    try:
        result = _against(
            url, lambda log: remote.verify_remote(log, export, manifest, log_keys=trusted)
        )
    except (remote.Unreachable, NoteError) as exc:
        raise fail(str(exc), code=1) from None
    report = result.report
    if not report.ok:
        err.print(f"[red]FAILED:[/red] {report.problems[0]}", highlight=False)
        raise typer.Exit(1)
    recomputed = (
        f"{result.recomputed} recomputed from their fields"
        if result.recomputed
        else "hashes as exported (CSV cells are defused for spreadsheets, so JSON Lines exports "
        "are recomputed from their fields)"
    )
    out.print(
        f"OK: the manifest's signature, the file's SHA-256 and its {report.events} rows check; "
        f"every row ({recomputed}) is in the log's signed tree of {result.tree_size} events "
        f"(key {result.key}); cosigned by: {', '.join(result.cosigners) or 'no witness'}",
        highlight=False,
    )
