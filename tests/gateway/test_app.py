"""The HTTP surface outside GraphQL: health, readiness, unknown routes, request ids, masking."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import strawberry
from asgi_lifespan import LifespanManager

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import Api, make_settings


async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tillit.test") as client:
            yield client


async def test_healthz_answers(api: Api) -> None:
    response = await api.http.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_database_is_migrated(api: Api) -> None:
    response = await api.http.get("/readyz")

    assert response.status_code == 200
    assert response.json()["status"] == "ready"


async def test_readyz_is_503_when_database_is_down() -> None:
    # Nothing listens on port 1: the database is unreachable.
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
    app = create_app(make_settings(url), database_url=url)
    async for client in client_for(app):
        response = await client.get("/readyz")
        health = await client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "database unreachable"}
    assert health.status_code == 200


async def test_readyz_is_503_when_migrations_are_not_at_head(empty_database_url: str) -> None:
    app = create_app(make_settings(empty_database_url), database_url=empty_database_url)
    async for client in client_for(app):
        response = await client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert "tillit migrate" in body["reason"]
    assert body["current_revision"] is None


async def test_unknown_route_is_404_json(api: Api) -> None:
    response = await api.http.get("/nope")

    assert response.status_code == 404
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_request_id_is_accepted_and_returned(api: Api) -> None:
    response = await api.http.get("/healthz", headers={"X-Request-ID": "abc-123"})

    assert response.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize("sent", [None, "has spaces", "x" * 200, "<script>"])
async def test_missing_or_unsafe_request_id_is_replaced(api: Api, sent: str | None) -> None:
    headers = {"X-Request-ID": sent} if sent else {}
    response = await api.http.get("/healthz", headers=headers)

    returned = response.headers["x-request-id"]
    assert returned != sent
    assert len(returned) == 32


async def test_graphiql_is_served_only_in_dev_mode(
    api: Api, database_url: str, settings: Settings
) -> None:
    production = await api.http.get("/graphql")
    dev_app = create_app(make_settings(database_url, dev=True), database_url=database_url)
    async for client in client_for(dev_app):
        development = await client.get("/graphql")

    assert production.status_code == 405
    assert production.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert development.status_code == 200
    assert "graphiql" in development.text.lower()


@strawberry.type
class _Broken:
    @strawberry.field
    def boom(self) -> str:
        raise RuntimeError("kari.nordmann@example.org caused this")


async def test_unexpected_error_is_masked_and_logged_once_without_its_message(
    db: object, database_url: str, capsys: pytest.CaptureFixture[str], json_logs: None
) -> None:
    app = create_app(
        make_settings(database_url),
        database_url=database_url,
        schema=strawberry.Schema(query=_Broken),
    )
    async for client in client_for(app):
        response = await client.post(
            "/graphql", json={"query": "{ boom }"}, headers={"X-Request-ID": "req-42"}
        )

    assert response.status_code == 500
    body = response.json()
    assert "data" not in body  # nothing of a failed operation is kept, so nothing is shown
    assert body["errors"][0]["message"] == "Internal server error."
    assert body["errors"][0]["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert "example.org" not in response.text
    logged = capsys.readouterr().err
    events = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    errors = [e for e in events if e["event"] == "graphql.unexpected_error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "req-42"
    assert errors[0]["error_type"] == "builtins.RuntimeError"
    assert any("test_app.py" in frame for frame in errors[0]["frames"])
    assert "example.org" not in logged


def test_library_tracebacks_are_logged_without_their_message(
    capsys: pytest.CaptureFixture[str], json_logs: None
) -> None:
    import logging

    try:
        raise ValueError("kari.nordmann@example.org")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")

    logged = capsys.readouterr().err
    assert "builtins.ValueError" in logged
    assert "example.org" not in logged
    assert "Traceback" not in logged


def test_an_exception_is_summarised_from_its_frames_without_reading_source_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Summarising a failure must stay cheap: while the database is down every request fails, and
    looking up each frame's source file (a stat and its lines) was most of a refused request's
    CPU."""
    import linecache

    from gateway.logs import exception_summary

    def failing() -> None:
        try:
            raise OSError("connection refused by kari.nordmann@example.org")
        except OSError as exc:
            raise RuntimeError("kari.nordmann@example.org") from exc

    looked_up: list[str] = []

    def counted(name: str) -> Any:
        original = getattr(linecache, name)

        def lookup(*args: Any, **kwargs: Any) -> Any:
            looked_up.append(name)
            return original(*args, **kwargs)

        return lookup

    for name in ("getline", "checkcache", "lazycache", "updatecache"):
        monkeypatch.setattr(linecache, name, counted(name))
    try:
        failing()
    except RuntimeError as exc:
        summary = exception_summary(exc)

    assert looked_up == []
    assert summary["error_type"] == "builtins.RuntimeError"
    assert summary["caused_by"] == ["builtins.OSError"]
    this_file = __file__.rsplit("/", 1)[-1]
    assert [f.split(" in ")[-1] for f in summary["frames"]] == [
        "test_an_exception_is_summarised_from_its_frames_without_reading_source_files",
        "failing",
    ]
    assert all(this_file in frame for frame in summary["frames"])
    assert "example.org" not in repr(summary)


def test_buffered_log_lines_are_written_in_batches(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.logs import _Stderr

    stream = _Stderr()
    stream._buffered = True  # as buffer() sets it, without starting the flusher thread
    stream.write('{"event": "one"}\n')
    stream.flush()  # what a logger calls after every line: nothing is written yet
    before = capsys.readouterr().err
    stream.write('{"event": "two"}\n')
    stream.drain()  # what the flusher thread (and exit) does

    assert before == ""
    assert capsys.readouterr().err == '{"event": "one"}\n{"event": "two"}\n'


def test_a_serving_process_freezes_what_it_loaded_and_collects_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from gateway import app as app_module

    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("TILLIT_DEV", "true")
    monkeypatch.setattr(app_module, "configure_logging", lambda *args, **kwargs: None)
    threshold = gc.get_threshold()
    try:
        app_module.create_app_from_environment()

        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (app_module.GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
