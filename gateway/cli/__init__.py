"""The `tillit` command line."""

from __future__ import annotations

import os
import sys

from gateway.cli import audiences, audit, clients, members, records
from gateway.cli.server import app
from gateway.cli.support import err

clients.register(app)
members.register(app)
records.register(app)
audit.register(app)
audiences.register(app)

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("TILLIT_DEV", "").lower() in ("1", "true", "yes"):
            raise
        # Outside dev mode a traceback could quote row values; say what failed and where to look.
        err.print(
            f"[red]error:[/red] unexpected {type(exc).__name__}; rerun with TILLIT_DEV=true "
            "on a development copy to see the traceback",
            highlight=False,
        )
        sys.exit(1)
