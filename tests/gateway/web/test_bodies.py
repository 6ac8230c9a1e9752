"""Bodies read with a limit: refused when declared or seen larger, never read past the limit."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.web.bodies import read_limited


def request_of(
    chunks: list[bytes], headers: dict[str, str] | None = None
) -> tuple[Request, list[int]]:
    """A request whose body arrives in `chunks` (as a chunked upload would); the list counts
    the chunks the application pulled."""
    pulled: list[int] = []

    async def receive() -> dict[str, Any]:
        n = len(pulled)
        pulled.append(n)
        return {
            "type": "http.request",
            "body": chunks[n] if n < len(chunks) else b"",
            "more_body": n + 1 < len(chunks),
        }

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return Request(scope, receive), pulled


async def test_a_body_within_the_limit_is_read_whole() -> None:
    request, _ = request_of([b"abc", b"def"])
    assert await read_limited(request, 6) == b"abcdef"


async def test_a_larger_body_is_refused_without_reading_the_rest() -> None:
    request, pulled = request_of([b"x" * 1000] * 100)
    assert await read_limited(request, 2500) is None
    assert len(pulled) == 3  # stopped at the chunk that crossed the limit


async def test_a_declared_larger_body_is_refused_before_any_of_it_is_read() -> None:
    request, pulled = request_of([b"x"], {"Content-Length": "10001"})
    assert await read_limited(request, 10_000) is None
    assert pulled == []


async def test_a_content_length_that_is_not_a_number_leaves_the_bytes_to_decide() -> None:
    request, _ = request_of([b"ok"], {"Content-Length": "lots"})
    assert await read_limited(request, 10) == b"ok"
    request, _ = request_of([b"x" * 11], {"Content-Length": "lots"})
    assert await read_limited(request, 10) is None
