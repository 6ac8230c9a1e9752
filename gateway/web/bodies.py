"""Reading a request body with a limit: refused as soon as it is declared or seen to be larger,
never read beyond it (a large body costs the gateway no more than the limit)."""

from __future__ import annotations

from starlette.requests import Request


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None when its Content-Length or its bytes exceed `limit`.

    A Content-Length that is not a number is not trusted either way: the bytes decide. A client
    that leaves before its body has arrived raises starlette's ClientDisconnect, which the request
    middleware logs as a departure, not as a failure.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
