"""How the benchmark and the load test start servers: uvicorn on a free local port."""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def uvicorn_command(
    factory: str, port: int, *, workers: int = 1, extra: tuple[str, ...] = ()
) -> list[str]:
    """Our own interpreter running uvicorn with an app factory, production-like: no access log
    (the gateway logs each request itself), warnings only from uvicorn."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        *extra,
        "--log-level",
        "warning",
    ]
