"""The peer in `make bench`: PostGraphile 4 (Node) on the same database, serving S1 two ways.

- `peer-view`: a plain view of the six fields (what PostGraphile does at its fastest);
- `peer-audited`: the same job as Tillit's `member(id, purpose)`, in one PL/pgSQL function: the
  client (a JWT claim PostGraphile verified) must be allowed the purpose, the enriched fields are
  released only under a valid consent, and an access event is inserted in the request's
  transaction (a STABLE function, so that PostGraphile offers it as a query, calling a VOLATILE
  SQL helper that inserts), which commits before the answer is sent.

PostGraphile is installed from bench/peer/package-lock.json into bench/peer/node_modules
(`npm ci`, once), and connects as the gateway's restricted login, like Tillit.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import asyncpg
import jwt
from sqlalchemy import make_url

from gateway.store import db as gateway_db
from gateway.store import migrate

PEER = Path(__file__).resolve().parent / "peer"
SCRIPTS = {"peer-view": "peer_view.lua", "peer-audited": "peer_audited.lua"}


def install() -> None:
    """PostGraphile from the lock file, once (the benchmark's own folder, not the repository's)."""
    if (PEER / "node_modules" / "postgraphile" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("make bench needs Node.js and npm for the peer (apt-get install npm)")
    subprocess.run(  # npm from the system, the lock file from the repository
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER, check=True
    )


async def prepare(url: str) -> None:
    """The peer's schema (bench/peer/schema.sql), applied by the database's owner."""
    connection = await asyncpg.connect(gateway_db.asyncpg_dsn(url))
    try:
        await connection.execute((PEER / "schema.sql").read_text(encoding="utf-8"))
    finally:
        await connection.close()


def token(secret: str, client_id: str) -> str:
    """What PostGraphile verifies: an HS256 JWT for its audience, naming the client."""
    claims = {
        "aud": "postgraphile",
        "client_id": client_id,
        "exp": dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def node_url(url: str) -> str:
    """The gateway login's URL as node-postgres reads it (libpq form, no SQLAlchemy driver)."""
    parsed = make_url(migrate.as_gateway_login(url)).set(drivername="postgresql")
    rendered: str = parsed.render_as_string(hide_password=False)
    return rendered


def command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("make bench needs Node.js for the peer (apt-get install nodejs)")
    return [node, str(PEER / "server.js")]
