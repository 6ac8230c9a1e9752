"""`tillit clients`: create, list, disable, enable and rotate API clients. Each change is an
audited admin action, written in the same transaction as the change."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.access.caches import POLICY_TTL_SECONDS
from gateway.access.clients import (
    DEFAULT_ROTATION_OVERLAP,
    IssuedClient,
    create_client,
    list_clients,
    rotate_key,
    set_disabled,
)
from gateway.cli.support import (
    emit,
    fail,
    in_transaction,
    out,
    parse_duration,
    record_system_event,
    run_with_database,
)
from gateway.domain import AccessOutcome, Capability, Role
from gateway.errors import TillitError
from gateway.store.db import raw_of

clients_app = typer.Typer(help="API clients and their keys.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(clients_app, name="clients")


def print_client(client: IssuedClient) -> None:
    out.print(
        f"client [bold]{client.name}[/bold] ({client.role.value}) id {client.id}", highlight=False
    )
    if client.purposes:
        out.print(f"  purposes: {', '.join(client.purposes)}", highlight=False)
    if client.capabilities:
        out.print(
            f"  capabilities: {', '.join(c.value for c in client.capabilities)}", highlight=False
        )
    out.print(f"  key: [bold]{client.key}[/bold]  (shown once; store it now)", highlight=False)


async def audit_admin_action(
    connection: AsyncConnection,
    operation: str,
    client_id: uuid.UUID,
    name: str,
    *,
    changed: bool = True,
    **details: Any,
) -> None:
    """The access event of an admin action on a client (it touches no member)."""
    await record_system_event(
        await raw_of(connection),
        operation,
        job="admin",
        outcome=AccessOutcome.WRITTEN if changed else AccessOutcome.UNCHANGED,
        details={"client": name, "clientId": str(client_id), **details},
    )


def _run(work: Any) -> Any:
    try:
        return run_with_database(in_transaction(work))
    except TillitError as exc:
        raise fail(exc.message) from None


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Option(help="A unique, human-readable name.")],
    role: Annotated[Role, typer.Option(help="app, auditor or admin.")] = Role.APP,
    purpose: Annotated[
        list[str] | None,
        typer.Option("--purpose", help="A purpose the client may act under (repeat)."),
    ] = None,
    capability: Annotated[
        list[Capability] | None,
        typer.Option(
            "--capability",
            help="capture_consent, enrich, cleanse, enroll, update_profile or close_membership "
            "(repeat).",
        ),
    ] = None,
) -> None:
    """Register an API client and print its key, once."""

    async def work(connection: AsyncConnection) -> IssuedClient:
        client = await create_client(
            connection, name=name, role=role, purposes=purpose or (), capabilities=capability or ()
        )
        await audit_admin_action(
            connection,
            "clientCreated",
            client.id,
            client.name,
            role=role.value,
            purposes=list(client.purposes),
            capabilities=[c.value for c in client.capabilities],
        )
        return client

    print_client(_run(work))


@clients_app.command("list")
def clients_list(
    fmt: Annotated[str, typer.Option("--format", help="table or csv.")] = "table",
) -> None:
    """Every client: role, purposes, capabilities, key id (never the key) and state."""
    clients = run_with_database(in_transaction(list_clients))
    rows = [
        [
            c.name,
            c.role.value,
            c.key_id,
            ", ".join(c.purposes),
            ", ".join(cap.value for cap in c.capabilities),
            f"disabled {c.disabled_at:%Y-%m-%d %H:%M}" if c.disabled_at else "active",
            f"until {c.previous_key_expires_at:%Y-%m-%d %H:%M} UTC"
            if c.previous_key_expires_at
            else "",
        ]
        for c in clients
    ]
    emit(
        ["name", "role", "key_id", "purposes", "capabilities", "state", "previous key"],
        rows,
        fmt,
        f"{len(rows)} clients",
    )


def _set_disabled(name: str, *, disabled: bool) -> None:
    async def work(connection: AsyncConnection) -> bool:
        client_id, changed = await set_disabled(
            connection, name, disabled=disabled, now=dt.datetime.now(dt.UTC)
        )
        operation = "clientDisabled" if disabled else "clientEnabled"
        await audit_admin_action(connection, operation, client_id, name.strip(), changed=changed)
        return changed

    changed = _run(work)
    state = "disabled" if disabled else "enabled"
    if not changed:
        out.print(f"client {name.strip()} was {state} already; nothing changed", highlight=False)
    elif disabled:
        out.print(
            f"client {name.strip()} disabled: its keys are refused from now on "
            f"(within {POLICY_TTL_SECONDS:g} s on workers that had it cached)",
            highlight=False,
        )
    else:
        out.print(f"client {name.strip()} enabled", highlight=False)


@clients_app.command("disable")
def clients_disable(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """Refuse the client's keys (reversible with `enable`)."""
    _set_disabled(name, disabled=True)


@clients_app.command("enable")
def clients_enable(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """Accept a disabled client's keys again."""
    _set_disabled(name, disabled=False)


@clients_app.command("rotate")
def clients_rotate(
    name: Annotated[str, typer.Argument(help="The client's name.")],
    overlap: Annotated[
        str,
        typer.Option(
            help="How long the current key keeps working: 0h, 12h, 1d, 7d ... (at most 30d)."
        ),
    ] = f"{DEFAULT_ROTATION_OVERLAP.days or 1}d",
) -> None:
    """Give the client a new key, printed once; the current key keeps working for the overlap."""
    now = dt.datetime.now(dt.UTC)
    window = parse_duration(overlap, now=now)

    async def work(connection: AsyncConnection) -> Any:
        rotation = await rotate_key(connection, name, overlap=window, now=now)
        await audit_admin_action(
            connection,
            "clientKeyRotated",
            rotation.id,
            rotation.name,
            keyId=rotation.key_id,
            previousKeyId=rotation.previous_key_id,
            previousValidUntil=rotation.previous_valid_until.isoformat(),
        )
        return rotation

    rotation = _run(work)
    out.print(f"client [bold]{rotation.name}[/bold]: new key", highlight=False)
    out.print(f"  key: [bold]{rotation.key}[/bold]  (shown once; store it now)", highlight=False)
    out.print(
        f"  the previous key ({rotation.previous_key_id}) works until "
        f"{rotation.previous_valid_until:%Y-%m-%d %H:%M:%S} UTC",
        highlight=False,
    )
