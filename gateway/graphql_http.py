"""GraphQL over HTTP: the one boundary where an operation's transaction opens and commits.

POST /graphql takes `{"query", "variables", "operationName"}` as JSON. The caller is authenticated,
the operation executed and its writes (the access events among them) committed in one transaction
before a byte of the response is sent; if the commit fails, no member data leaves (fail closed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import sqlalchemy.exc
import structlog
from graphql import GraphQLError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from strawberry import Schema
from strawberry.http.ides import get_graphql_ide_html

from gateway.auth import authenticate
from gateway.domain import ErrorCode
from gateway.errors import AuditUnavailable, TillitError, Unauthenticated
from gateway.logs import exception_summary
from gateway.middleware import request_id_of
from gateway.settings import Settings
from resolvers.context import Context

log = structlog.get_logger("tillit.graphql")

MAX_BODY_BYTES = 1_000_000
# Failures that mean "the database cannot be reached or answer now", not "this request is wrong".
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    OSError,
    asyncio.TimeoutError,
)


def error_body(code: ErrorCode, message: str, **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code.value, **extensions}}]}


def error_response(status: int, code: ErrorCode, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers or None)


def _bad_request(message: str) -> JSONResponse:
    return error_response(400, ErrorCode.BAD_REQUEST, message)


async def _read_operation(request: Request) -> dict[str, Any] | JSONResponse:
    """The operation in the request body, or a 400 that says what is wrong with it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _bad_request("Send the operation as JSON (Content-Type: application/json).")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return error_response(413, ErrorCode.BAD_REQUEST, "The request body is too large.")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return error_response(413, ErrorCode.BAD_REQUEST, "The request body is too large.")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _bad_request("The request body is not valid JSON.")
    if not isinstance(payload, dict):
        return _bad_request("A GraphQL request is a JSON object with a `query` string.")
    query = payload.get("query")
    variables = payload.get("variables")
    operation_name = payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        return _bad_request("A GraphQL request needs a non-empty `query` string.")
    if variables is not None and not isinstance(variables, dict):
        return _bad_request("`variables` must be a JSON object.")
    if operation_name is not None and not isinstance(operation_name, str):
        return _bad_request("`operationName` must be a string.")
    return {"query": query, "variables": variables, "operation_name": operation_name}


def _format_error(error: GraphQLError) -> tuple[dict[str, Any], bool]:
    """The error as the caller sees it, and whether it was unexpected (and so masked)."""
    original = error.original_error
    formatted: dict[str, Any] = {}
    if isinstance(original, TillitError):
        formatted["message"] = original.message
        extensions = original.as_extensions()
        unexpected = False
    elif original is None or isinstance(original, GraphQLError):
        formatted["message"] = error.message
        code = (
            ErrorCode.BAD_USER_INPUT
            if error.message.startswith("Variable ")
            else ErrorCode.GRAPHQL_PARSE_FAILED
            if error.message.startswith("Syntax Error")
            else ErrorCode.GRAPHQL_VALIDATION_FAILED
        )
        extensions = {"code": code.value}
        unexpected = False
    else:
        formatted["message"] = "Internal server error."
        extensions = {"code": ErrorCode.INTERNAL_SERVER_ERROR.value}
        unexpected = True
    if error.locations:
        formatted["locations"] = [
            {"line": loc.line, "column": loc.column} for loc in error.locations
        ]
    if error.path:
        formatted["path"] = error.path
    formatted["extensions"] = extensions
    return formatted, unexpected


class _Rollback(Exception):
    """Raised inside the transaction to undo an operation that failed unexpectedly."""


def graphql_endpoints(
    schema: Schema,
) -> tuple[Callable[[Request], Awaitable[Response]], Callable[[Request], Awaitable[Response]]]:
    """The POST handler (operations) and the GET handler (GraphiQL in dev mode)."""

    async def execute(request: Request) -> Response:
        request_id = request_id_of(request.scope)
        operation = await _read_operation(request)
        if isinstance(operation, JSONResponse):
            return operation
        engine: AsyncEngine = request.state.engine
        settings: Settings = request.state.settings
        outcome: dict[str, Any] = {}
        executed = False
        try:
            async with engine.begin() as connection:
                principal = await authenticate(
                    connection,
                    request.headers.get("authorization"),
                    token_secret=request.state.token_keys,
                    clients=request.state.client_cache,
                )
                context = Context.create(
                    connection=connection,
                    principal=principal,
                    request_id=request_id,
                    settings=settings,
                    policy=request.state.policy_cache,
                )
                result = await schema.execute(
                    operation["query"],
                    variable_values=operation["variables"],
                    context_value=context,
                    operation_name=operation["operation_name"],
                )
                errors = [_format_error(e) for e in result.errors or ()]
                withheld = [(error, False) for error in context.field_errors]
                outcome = {"data": result.data, "errors": errors}
                failures = [
                    e.original_error
                    for e, (_, unexpected) in zip(result.errors or (), errors, strict=True)
                    if unexpected and e.original_error is not None
                ]
                if failures:
                    for failure in failures:
                        log.error("graphql.unexpected_error", **exception_summary(failure))
                    raise _Rollback
                executed = True
                outcome["errors"] = errors + withheld if result.data is not None else errors
                # The access events go in with the operation's other writes; the commit below
                # makes them durable before any of the data they describe is sent.
                await context.audit.flush(connection)
        except Unauthenticated as exc:
            return error_response(
                401, exc.code, exc.message, **{"WWW-Authenticate": 'Bearer realm="tillit"'}
            )
        except _Rollback:
            # Nothing of a failed operation is kept, so nothing of it may be shown either.
            return JSONResponse(
                {"data": None, "errors": [e for e, _ in outcome["errors"]]}, status_code=500
            )
        except Exception as exc:
            if not executed and not isinstance(exc, DATABASE_UNAVAILABLE):
                raise
            # The audit write or the commit failed, or the database is gone: release nothing.
            log.error("graphql.audit_unavailable", **exception_summary(exc))
            unavailable = AuditUnavailable()
            return error_response(
                503, unavailable.code, unavailable.message, **{"Retry-After": "1"}
            )
        body: dict[str, Any] = {}
        if outcome["errors"]:
            body["errors"] = [e for e, _ in outcome["errors"]]
        body["data"] = outcome["data"]
        # A document that could not run (syntax, validation, variables) is the caller's error.
        status = 400 if outcome["data"] is None and outcome["errors"] else 200
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    async def ide(request: Request) -> Response:
        settings: Settings = request.state.settings
        if not settings.graphiql:
            return error_response(
                405, ErrorCode.BAD_REQUEST, "Send GraphQL operations with POST.", Allow="POST"
            )
        return HTMLResponse(get_graphql_ide_html())

    return execute, ide
