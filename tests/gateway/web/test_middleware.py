"""The request middleware: an unexpected failure is a masked 500 that carries the request id, and
is logged once, with the id, without its message."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.web.middleware import RequestContextMiddleware
from tests.conftest import listening, make_settings


async def boom(request: Request) -> Response:
    raise RuntimeError("kari.nordmann@example.org caused this")


async def test_an_unexpected_failure_is_a_500_with_its_request_id_logged_once(
    capsys: pytest.CaptureFixture[str], json_logs: None
) -> None:
    app = Starlette(
        routes=[Route("/boom", boom)], middleware=[Middleware(RequestContextMiddleware)]
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://tillit.test") as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-500"})

    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert response.json()["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert "example.org" not in response.text
    logged = capsys.readouterr()
    events = [json.loads(line) for line in logged.err.splitlines() if line.startswith("{")]
    errors = [e for e in events if e.get("level") == "error"]
    assert [e["event"] for e in errors] == ["http.unexpected_error"]
    assert errors[0]["request_id"] == "req-500"
    ours = [e for e in events if not e["event"].startswith("HTTP Request")]  # httpx's own line
    assert {e["event"] for e in ours} == {"http.unexpected_error", "request.finished"}
    assert all(e["request_id"] == "req-500" for e in ours)
    assert "example.org" not in logged.err + logged.out


async def test_a_client_that_leaves_in_the_middle_of_its_body_is_logged_as_gone(
    capsys: pytest.CaptureFixture[str], json_logs: None, db: AsyncEngine, gateway_url: str
) -> None:
    """Not an unexpected failure: nothing went wrong here, and an error with a trace for every
    dropped upload would drown the real ones."""
    async with listening(make_settings(gateway_url), gateway_url) as url:
        host, port = url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: tillit.test\r\nX-Request-ID: req-gone\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"query": "{ purposes { key } }", "variables": {"padding": "'
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        logged = ""
        async with asyncio.timeout(5):
            while '"request.finished"' not in logged:
                await asyncio.sleep(0.05)
                logged += capsys.readouterr().err

    events = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    ours = [e for e in events if e.get("request_id") == "req-gone"]
    assert [(e["event"], e["level"]) for e in ours] == [
        ("request.disconnected", "info"),
        ("request.finished", "info"),
    ]
    assert ours[-1]["status"] == 499
    assert not [e for e in events if e["level"] == "error"]
    assert "Traceback" not in logged
