"""The public list of purposes: what each one means, in plain language."""

from __future__ import annotations

from gateway.domain import Purpose
from resolvers.context import Context


async def list_purposes(context: Context) -> list[Purpose]:
    """Every purpose in force. Public, as a privacy notice is public."""
    return list((await context.purposes()).values())
