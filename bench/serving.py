"""How the benchmark and the load test start servers (uvicorn on a free local port) and
databases of their own, and how they count PostgreSQL's CPU."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import psutil

from gateway.store.db import asyncpg_dsn, normalize_url
from gateway.store.embedded import start_embedded, with_database


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


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process on this machine, by pid (empty when the server
    runs elsewhere): the difference over a run is the database's share of its work."""
    seen: dict[int, float] = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        name, times = process.info["name"], process.info["cpu_times"]
        if name and name.startswith("postgres") and times is not None:
            seen[process.pid] = times.user + times.system
    return seen


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@asynccontextmanager
async def scratch_database(prefix: str, data_dir: Path) -> AsyncIterator[str]:
    """A new database on DATABASE_URL's server (default: the embedded one in `data_dir`), named
    `prefix` and a random suffix, dropped afterwards; yields its URL."""
    configured = os.environ.get("DATABASE_URL")
    server = normalize_url(configured) if configured else start_embedded(data_dir)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(server))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(server, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class RssSampler(threading.Thread):
    """Samples a process's resident memory every 50 ms and keeps the first sample and the peak
    (S4's and S5's peak RSS)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.first = self.process.memory_info().rss
        self.peak = self.first
        self._stop_sampling = threading.Event()

    def run(self) -> None:
        while not self._stop_sampling.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop_sampling.set()
        self.join()
