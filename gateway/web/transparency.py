"""The log's public face (no credentials, hashes only, as in Certificate Transparency):

- GET /audit/keys: every key the log was signed with, and the witnesses it knows;
- GET /audit/checkpoint[?size=N]: the newest checkpoint (or tree size N's) as a C2SP signed
  note, with the witnesses' cosignatures;
- GET /audit/proof/inclusion?size=N&position=P[&position=...]: RFC 9162 inclusion proofs;
- GET /audit/proof/consistency?from=M&to=N: an RFC 9162 consistency proof;
- GET /audit/tile/<L>/<N>[.p/<W>]: the tree's hash tiles as C2SP tlog-tiles serves them, from
  which any client computes proofs itself (immutable: cached for a year);
- POST /audit/cosignature: a witness hands back the checkpoint it cosigned.

Reading these is not an access to personal data, so it writes no access event. Each client
address has a rate of its own for them (TILLIT_PUBLIC_RATE_LIMIT_PER_SECOND), and no request does
more than a couple of milliseconds' work.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gateway.audit import tiles, transparency
from gateway.audit.tree import HASH_SIZE, ProofError, parse_tile_path, tile_width
from gateway.domain import ErrorCode
from gateway.errors import DatabaseUnavailable, RateLimited
from gateway.logs import exception_summary
from gateway.settings import Settings
from gateway.store import db
from gateway.store.db import Raw
from gateway.web.bodies import read_limited
from gateway.web.boundary import error_body
from gateway.web.ratelimit import RateLimiter, public_subject

log = structlog.get_logger("tillit.transparency")
NOTE_MEDIA = "text/plain; charset=utf-8"
# Positions in one inclusion request: no anonymous request may cost more than a couple of
# milliseconds (make bench, A1: a proof into a tree of 150,000 events hashes some 500 nodes, 0.55
# ms; eight positions cost 2.5 ms of CPU, four 2.2). A client that wants many proofs computes them
# from the tiles (GET /audit/tile/...), as `tillit audit verify --remote` does.
MAX_POSITIONS = 2
# How long a refusal for being over the rate is held before it is sent: a client that asks again
# at once (a flood's loop) then asks once a second per connection, and waiting costs no CPU.
REFUSAL_DELAY_SECONDS = 1.0
# Tiles never change once served (a partial tile of width W is the same W hashes for ever).
IMMUTABLE = "public, max-age=31536000, immutable"
_UNAVAILABLE = "The audit log cannot be read now. Try again."


class _Refusal(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.response = JSONResponse(error_body(code, message), status_code=status)


def _bad(message: str) -> _Refusal:
    return _Refusal(400, ErrorCode.BAD_REQUEST, message)


@asynccontextmanager
async def _database(request: Request, *, write: bool = False) -> AsyncIterator[Raw]:
    settings: Settings = request.state.settings
    async with asyncio.timeout(settings.request_timeout_seconds):
        with db.translated():
            async with db.raw_operation(request.state.raw_pool, transaction=write) as raw:
                yield raw


async def _answer(request: Request, work: Callable[[Raw], Awaitable[Response]]) -> Response:
    """Run `work` on a connection under the request's deadline, once the caller's address is
    within its rate; refusals and an unreachable database become clear errors (no SQL, no
    trace)."""
    limiter: RateLimiter | None = request.state.public_rate_limit
    subject = public_subject(request.client.host if request.client else None)
    try:
        # A caller this worker knows is counted, and refused when over, before any connection.
        counted = limiter is None or limiter.check_known(subject)
        async with _database(request, write=request.method == "POST") as raw:
            if not counted:
                assert limiter is not None
                await limiter.check(raw, subject)
            return await work(raw)
    except _Refusal as refusal:
        return refusal.response
    except RateLimited as limited:
        await hold_refusal(REFUSAL_DELAY_SECONDS)
        return JSONResponse(
            error_body(limited.code, limited.message),
            status_code=429,
            headers={"Retry-After": str(limited.retry_after)},
        )
    except (DatabaseUnavailable, TimeoutError) as exc:
        log.error("transparency.unavailable", path=request.url.path, **exception_summary(exc))
        return JSONResponse(
            error_body(ErrorCode.AUDIT_UNAVAILABLE, _UNAVAILABLE),
            status_code=503,
            headers={"Retry-After": "1"},
        )


async def hold_refusal(seconds: float) -> None:
    """Wait before sending a refusal for being over the rate (see REFUSAL_DELAY_SECONDS)."""
    await asyncio.sleep(seconds)


def _required(request: Request, name: str) -> int:
    value = _count(request, name)
    if value is None:
        raise _bad(f"`{name}` is required (a positive whole number).")
    return value


def _count(request: Request, name: str) -> int | None:
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1 or not values[0].isascii() or not values[0].isdigit():
        raise _bad(f"`{name}` is one positive whole number.")
    if len(values[0]) > 19 or not 1 <= int(values[0]) < 1 << 63:
        raise _bad(f"`{name}` is a positive whole number below 2^63.")
    return int(values[0])


async def _tree_size(raw: Raw, size: int) -> None:
    """`size` must be at most the newest checkpoint's: proofs for a tree nobody signed prove
    nothing."""
    latest = await transparency.latest_size(raw)
    if latest is None or size > latest:
        raise _Refusal(
            404,
            ErrorCode.NOT_FOUND,
            f"No checkpoint covers tree size {size} yet (the newest is {latest or 0}).",
        )


def _b64(values: list[bytes]) -> list[str]:
    return [base64.b64encode(v).decode() for v in values]


async def keys(request: Request) -> Response:
    settings: Settings = request.state.settings

    async def work(raw: Raw) -> Response:
        listed = await transparency.keys(raw, settings.audit_signer, settings.witness_keys)
        return JSONResponse(listed, headers={"Cache-Control": "max-age=60"})

    return await _answer(request, work)


async def checkpoint(request: Request) -> Response:
    async def work(raw: Raw) -> Response:
        size = _count(request, "size")
        found = await transparency.published(raw, size)
        if found is None:
            what = "nothing is sealed yet" if size is None else f"no checkpoint of size {size}"
            raise _Refusal(404, ErrorCode.NOT_FOUND, f"No checkpoint: {what}.")
        return PlainTextResponse(
            found.note,
            media_type=NOTE_MEDIA,
            headers={"Cache-Control": "no-store" if size is None else "max-age=60"},
        )

    return await _answer(request, work)


async def inclusion(request: Request) -> Response:
    async def work(raw: Raw) -> Response:
        size = _required(request, "size")
        raw_positions = request.query_params.getlist("position")
        if not raw_positions:
            raise _bad("`position` is required: the event's position in the log (1 or more).")
        if len(raw_positions) > MAX_POSITIONS:
            raise _bad(f"At most {MAX_POSITIONS} positions in one request.")
        positions: list[int] = []
        for value in raw_positions:
            if not value.isascii() or not value.isdigit() or len(value) > 19:
                raise _bad("`position` is a positive whole number.")
            if not 1 <= int(value) <= size:
                raise _bad(f"Position {value} is not in a tree of {size} events.")
            positions.append(int(value))
        await _tree_size(raw, size)
        proofs = await tiles.inclusion_proofs(raw, [p - 1 for p in positions], size)
        return JSONResponse(
            {
                "treeSize": size,
                "proofs": [
                    {"position": p, "leafIndex": p - 1, "hashes": _b64(h)}
                    for p, h in zip(positions, proofs, strict=True)
                ],
            },
            headers={"Cache-Control": "max-age=3600"},
        )

    return await _answer(request, work)


async def consistency(request: Request) -> Response:
    async def work(raw: Raw) -> Response:
        old, new = _required(request, "from"), _required(request, "to")
        if old > new:
            raise _bad("`from` must not be larger than `to`: the log only grows.")
        await _tree_size(raw, new)
        try:
            hashes = await tiles.consistency_proof(raw, old, new)
        except ProofError as exc:
            raise _bad(str(exc)) from None
        return JSONResponse(
            {"from": old, "to": new, "hashes": _b64(hashes)},
            headers={"Cache-Control": "max-age=3600"},
        )

    return await _answer(request, work)


async def tile(request: Request) -> Response:
    """A hash tile as C2SP tlog-tiles serves it: `tile/<L>/<N>[.p/<W>]`, the W (or 256) hashes
    of the tile, 32 bytes each, as the newest checkpoint's tree holds them."""
    path: str = request.path_params["path"]

    async def work(raw: Raw) -> Response:
        if path == "entries" or path.startswith("entries/"):
            raise _Refusal(
                404,
                ErrorCode.NOT_FOUND,
                "Entry bundles are not published: an event names a member. Its leaf hash is in "
                "the level-0 tiles; auditors read the events through GET /audit/export.",
            )
        parsed = parse_tile_path(path)
        if parsed is None:
            raise _Refusal(
                404,
                ErrorCode.NOT_FOUND,
                "No such tile: tile/<L>/<N>[.p/<W>] as C2SP tlog-tiles spells it "
                "(N in groups of three digits, x001/x234/067; W from 1 to 255).",
            )
        which, width = parsed
        published = await transparency.latest_size(raw) or 0
        data = (await tiles.read_tiles(raw, [which])).get(which, b"")
        if tile_width(which, published) < width or len(data) < width * HASH_SIZE:
            raise _Refusal(
                404, ErrorCode.NOT_FOUND, "No published checkpoint's tree holds this tile yet."
            )
        return Response(
            data[: width * HASH_SIZE],
            media_type="application/octet-stream",
            headers={"Cache-Control": IMMUTABLE},
        )

    return await _answer(request, work)


async def cosignature(request: Request) -> Response:
    settings: Settings = request.state.settings
    body = await _limited_body(request)
    if isinstance(body, Response):
        return body

    async def work(raw: Raw) -> Response:
        try:
            head, kept = await transparency.add_cosignatures(
                raw, body, settings.witness_keys, settings.audit_signer
            )
        except transparency.CosignatureRefused as refused:
            code = {403: ErrorCode.FORBIDDEN, 409: ErrorCode.BAD_REQUEST}.get(
                refused.status, ErrorCode.BAD_REQUEST
            )
            raise _Refusal(refused.status, code, refused.message) from None
        log.info("transparency.cosigned", tree_size=head.size, witnesses=kept)
        return JSONResponse({"treeSize": head.size, "accepted": kept})

    return await _answer(request, work)


async def _limited_body(request: Request) -> str | Response:
    limit = 16_384
    body = await read_limited(request, limit)
    if body is None:
        return JSONResponse(
            error_body(ErrorCode.BAD_REQUEST, f"A cosigned checkpoint is at most {limit} bytes."),
            status_code=413,
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return JSONResponse(
            error_body(ErrorCode.BAD_REQUEST, "A cosigned checkpoint is UTF-8 text."),
            status_code=400,
        )


ROUTES: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
    ("/audit/keys", keys, ["GET"]),
    ("/audit/checkpoint", checkpoint, ["GET"]),
    ("/audit/proof/inclusion", inclusion, ["GET"]),
    ("/audit/proof/consistency", consistency, ["GET"]),
    ("/audit/tile/{path:path}", tile, ["GET"]),
    ("/audit/cosignature", cosignature, ["POST"]),
]
