"""The `tillit` commands that run and set up the gateway: serve, migrate, policy, token and
demo."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.access.clients import ensure_client
from gateway.access.purposes import DEFAULT_POLICY_FILE, load_purposes, read_policy_file
from gateway.audit.sealer import run_sealer
from gateway.cli.clients import print_client
from gateway.cli.demo import load_demo
from gateway.cli.support import (
    database_url,
    fail,
    in_transaction,
    out,
    run_with_database,
    settings_or_exit,
)
from gateway.domain import Capability, Role
from gateway.errors import PolicyFileError
from gateway.logs import flush_logs
from gateway.records.members import member_exists
from gateway.settings import load_settings
from gateway.store import migrate as migrations

app = typer.Typer(
    name="tillit",
    help="Tillit: a consent-gated GraphQL gateway in front of member profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="The purpose policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

DEMO_APP = "demo-app"
DEMO_AUDITOR = "demo-auditor"


# -- migrate ---------------------------------------------------------------------------------------


@app.command()
def migrate(
    to: Annotated[str, typer.Option(help="Revision to upgrade to.")] = "head",
    down_to: Annotated[
        str | None,
        typer.Option("--down-to", help="Downgrade to this revision instead (`base`: empty)."),
    ] = None,
) -> None:
    """Upgrade the database schema to head (or downgrade it)."""

    async def work(engine: AsyncEngine) -> str | None:
        if down_to is not None:
            await migrations.downgrade(engine, down_to)
        else:
            await migrations.upgrade(engine, to)
        async with engine.connect() as connection:
            return await migrations.current_revision(connection)

    revision = run_with_database(work)
    out.print(f"database at revision {revision or 'base (empty)'}")


# -- policy ----------------------------------------------------------------------------------------


@policy_app.command("load")
def policy_load(
    file: Annotated[Path, typer.Argument(help="Policy file (TOML).")] = DEFAULT_POLICY_FILE,
    check: Annotated[
        bool, typer.Option("--check", help="Validate only; do not touch the database.")
    ] = False,
) -> None:
    """Validate the purpose policy file and load it into the database (idempotent)."""
    try:
        purposes = read_policy_file(file)
    except PolicyFileError as exc:
        raise fail(f"invalid policy file: {exc}") from None
    if check:
        out.print(f"{file}: valid, {len(purposes)} purposes")
        return
    summary = run_with_database(in_transaction(lambda c: load_purposes(c, purposes)))
    for label, keys in (
        ("created", summary.created),
        ("updated", summary.updated),
        ("unchanged", summary.unchanged),
        ("retired", summary.retired),
    ):
        if keys:
            out.print(f"{label}: {', '.join(keys)}")


# -- token -----------------------------------------------------------------------------------------


@app.command()
def token(
    member_id: Annotated[str, typer.Argument(help="The member's id (UUID).")],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
) -> None:
    """Mint a member token (for development and testing)."""
    try:
        subject = uuid.UUID(member_id)
    except ValueError:
        raise fail("a member id is a UUID") from None

    async def work(engine: AsyncEngine) -> bool:
        async with engine.connect() as connection:
            return await member_exists(connection, subject)

    if not run_with_database(work):
        raise fail("no member has this id")
    settings = settings_or_exit()
    lifetime = dt.timedelta(seconds=ttl or settings.member_token_ttl_seconds)
    print(mint_member_token(subject, settings.signing_secret, lifetime))


# -- demo ------------------------------------------------------------------------------------------


async def _setup_demo(connection: AsyncConnection, members: int, seed: int, clients: bool) -> None:
    summary = await load_demo(connection, count=members, seed=seed)
    out.print(
        f"demo: {summary.members} members ({summary.members_added} new), "
        f"{summary.consent_events} consent events, {summary.enrichment_records} enriched values, "
        f"{summary.cleansing_records} cleansing records"
    )
    if clients:
        purposes = ["membership_service", "personalized_offers", "customer_insight", "data_quality"]
        print_client(
            await ensure_client(
                connection,
                name=DEMO_APP,
                role=Role.APP,
                purposes=purposes,
                capabilities=list(Capability),
            )
        )
        print_client(await ensure_client(connection, name=DEMO_AUDITOR, role=Role.AUDITOR))
    settings = load_settings()
    member_token = mint_member_token(
        summary.first_member_id,
        settings.signing_secret,
        dt.timedelta(seconds=settings.member_token_ttl_seconds),
    )
    out.print(f"member {summary.first_member_id} token:", highlight=False)
    print(member_token)


@app.command()
def demo(
    members: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many members.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 1,
    clients: Annotated[bool, typer.Option(help="Also (re)create the demo clients.")] = True,
) -> None:
    """Load synthetic demo members (idempotent), the demo clients and print a member token."""
    run_with_database(in_transaction(lambda c: _setup_demo(c, members, seed, clients)))


# -- serve -----------------------------------------------------------------------------------------


async def _prepare(engine: AsyncEngine, demo_members: int | None) -> None:
    await migrations.upgrade(engine)
    purposes = read_policy_file(DEFAULT_POLICY_FILE)
    async with engine.begin() as connection:
        await load_purposes(connection, purposes)
        if demo_members:
            await _setup_demo(connection, demo_members, 1, True)


# How uvicorn serves the gateway (the tests start it the same way). The protocol is named, not
# imported: worker processes import it, and this command starts faster without it.
SERVER_OPTIONS: dict[str, Any] = {
    "http": "gateway.web.protocol:HeaderTimeoutProtocol",
    "log_config": None,
    "access_log": False,
    "server_header": False,
    "proxy_headers": False,
}


def _exit_normally(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [TILLIT_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [TILLIT_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [TILLIT_WORKERS].")] = None,
    prepare: Annotated[
        bool, typer.Option("--prepare", help="Migrate and load the policy before serving.")
    ] = False,
    demo_members: Annotated[
        int | None,
        typer.Option("--demo", help="Also load this many demo members (implies --prepare)."),
    ] = None,
) -> None:
    """Serve the gateway (GraphiQL at /graphql in dev mode)."""
    import uvicorn

    settings = settings_or_exit()
    url = database_url(settings)
    if prepare or demo_members:
        try:
            run_with_database(
                lambda engine: _prepare(engine, demo_members), settings=settings, url=url
            )
        except PolicyFileError as exc:
            raise fail(f"invalid policy file: {exc}") from None
    if settings.database_url is None:
        # The embedded default serves as production does: migrated by the owner (above), served
        # by a login in the restricted role, which cannot rewrite the audit trail or lift its
        # guards. With DATABASE_URL the operator chooses the login (docs/audit.md: the
        # restricted role).
        try:
            run_with_database(migrations.ensure_gateway_login, settings=settings, url=url)
        except RuntimeError as exc:
            raise fail(f"{exc} (tillit migrate, or tillit serve --prepare)") from None
        url = migrations.as_gateway_login(url)
    # Workers are separate processes: they read the settings, and this URL, from the environment.
    os.environ["DATABASE_URL"] = url
    worker_count = workers or settings.workers
    if worker_count > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker keeps its metrics in files here, so /metrics on any worker reports all.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tillit-metrics-")
    bind_host, bind_port = host or settings.host, port or settings.port
    out.print(f"serving on http://{bind_host}:{bind_port}/graphql  (Ctrl-C stops)", highlight=False)
    # uvicorn ends a graceful shutdown by raising the signal again with the handler it found:
    # this one turns SIGTERM (systemd, containers, Kubernetes) into a normal exit, so that the
    # log lines still buffered are written and the embedded PostgreSQL is stopped (its handle is
    # released at exit); the default handler would kill the process before either.
    signal.signal(signal.SIGTERM, _exit_normally)
    sealer = SealerProcess() if settings.seal_interval_seconds > 0 else None
    if sealer is not None:
        # The workers stand by: they seal only if the sealer process is gone for a while.
        os.environ["TILLIT_SEALER"] = "standby"
        sealer.start()
    try:
        uvicorn.run(
            "gateway.app:create_app_from_environment",
            factory=True,
            host=bind_host,
            port=bind_port,
            workers=worker_count,
            **SERVER_OPTIONS,
        )
    finally:
        if sealer is not None:
            sealer.stop()


log = structlog.get_logger("tillit.serve")


class SealerProcess:
    """`tillit sealer` beside the workers, restarted a second after it ends, until stopped.

    Sealing in a process of its own gets it a CPU of its own: inside a worker it ran between the
    requests' turns of the event loop, and under sustained load fell behind (make bench, H2)."""

    RESTART_SECONDS = 1.0

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self.process = self._spawn()
        self.watcher.start()

    @staticmethod
    def _spawn() -> subprocess.Popen[bytes]:
        # Our own interpreter and module: the environment carries the settings and the URL.
        return subprocess.Popen([sys.executable, "-m", "gateway", "sealer"])

    def _watch(self) -> None:
        while not self.stopping.wait(self.RESTART_SECONDS):
            if self.process is not None and self.process.poll() is not None:
                log.warning("sealer.restarted", exit_code=self.process.returncode)
                self.process = self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@app.command()
def sealer() -> None:
    """Seal the access log every TILLIT_SEAL_INTERVAL_SECONDS in a process of its own, and ask the
    witnesses of TILLIT_AUDIT_WITNESS_URLS to cosign, until SIGTERM (`tillit serve` starts one
    beside its workers). Only one process seals a database at a time; a second waits for the
    lock."""
    settings = settings_or_exit()
    interval = settings.seal_interval_seconds or 10.0

    async def work(engine: AsyncEngine) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Here, not at the top: the other commands start faster without httpx.
        from gateway.audit.witnessing import run_witnessing, witnesses_of

        witnesses = witnesses_of(settings.witness_keys, settings.witness_urls)
        await asyncio.gather(
            run_sealer(engine, settings.audit_signer, interval=interval, stop=stop),
            run_witnessing(engine, witnesses, settings.audit_signer, interval=interval, stop=stop),
        )

    run_with_database(work, settings=settings)
    flush_logs()
