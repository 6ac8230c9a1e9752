"""GraphQL over HTTP: read the body, prepare the document, pick the executor, shape the answer.

POST /graphql takes `{"query", "variables", "operationName"}` as JSON (or, when batching is on, an
array of them). The document is prepared once (parse, validation, operation limits; see
`gateway.web.operations`); the operation then runs inside the operation boundary
(gateway.web.boundary), which authenticates and rate-limits the caller and commits the
operation's writes (the access events among them) before a byte of the response is sent; if the
commit fails, no member data leaves (fail closed).

Operations that only read profiles (`member`, `members`, `audience`, `purposes`) write nothing but
their access events, so they run on the raw pool without an explicit transaction; their events are
then written with those of the other reads finishing at the same time, in one INSERT that commits
on its own (gateway.audit.group_commit), and the data is sent only after it has. The consent
changes run on the raw pool in one transaction, every other operation in one SQLAlchemy
transaction. Reads and the consent changes go through the direct executors (gateway.web.fastpath,
gateway.web.fastwrite) where they have a plan, else through graphql-core.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any

import orjson
import structlog
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    execute,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from strawberry import Schema
from strawberry.execution import optimized_is_awaitable
from strawberry.http.ides import get_graphql_ide_html
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gateway.domain import ErrorCode
from gateway.errors import TillitError
from gateway.logs import exception_summary
from gateway.settings import Settings
from gateway.store import db
from gateway.web import metrics
from gateway.web.bodies import read_limited
from gateway.web.boundary import RATE_COUNTED, Boundary, Refused, Via, error_body
from gateway.web.fastpath import FastPath
from gateway.web.fastwrite import WritePath
from gateway.web.media import GRAPHQL_RESPONSE_JSON, JSON, negotiate, status_of
from gateway.web.operations import Limits, Preparer, Refusal, variables_problem
from resolvers.context import Context
from schema.categories import graphql_names_of
from schema.types import Member

log = structlog.get_logger("tillit.graphql")

# Root fields that only read and write nothing but their access events.
READ_ONLY_ROOTS = frozenset({"member", "members", "audience", "purposes", "__typename"})
# Mutations whose every statement is raw SQL (gateway.records.consents, and enrichment's purge).
RAW_WRITE_ROOTS = frozenset({"grantConsent", "withdrawConsent", "__typename"})


@dataclass
class Answer:
    """One operation's HTTP status, body and extra headers. A request error (well-formed, but
    it could not execute: see gateway.web.media) has no `data` entry, and its status depends on the
    media type asked for."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    operation: str = "unknown"
    request_error: bool = False


def _error_answer(status: int, code: ErrorCode, message: str, **headers: str) -> Answer:
    return Answer(status, error_body(code, message), dict(headers))


def _request_error(errors: list[dict[str, Any]], operation: str = "invalid") -> Answer:
    return Answer(400, {"errors": errors}, operation=operation, request_error=True)


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


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    found = None
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            if name is None:
                if found is not None:
                    return None  # several operations and no name: execute() says so
                found = definition
            elif definition.name is not None and definition.name.value == name:
                return definition
    return found


def _only(
    operation: OperationDefinitionNode | None, kind: OperationType, roots: frozenset[str]
) -> bool:
    if operation is None or operation.operation is not kind:
        return False
    return all(
        isinstance(s, FieldNode) and s.name.value in roots
        for s in operation.selection_set.selections
    )


def _label(operation: OperationDefinitionNode | None) -> str:
    """A bounded label for metrics and logs: the root fields, never the caller's names."""
    if operation is None:
        return "unknown"
    roots = sorted(
        {s.name.value for s in operation.selection_set.selections if isinstance(s, FieldNode)}
    )
    return ",".join(roots)[:100] or "fragment"


class _Rollback(Exception):
    """Raised inside the transaction to undo an operation that failed unexpectedly."""


class _Contended(Exception):
    """Raised inside the transaction to undo an operation that lost a race with another (see
    gateway.store.db.contended), so that it runs again."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


# Runs of one operation that lost a race before it is answered CONFLICT: a deadlock victim or a
# key taken meanwhile wins on its second run, since the other transaction has committed by then.
ATTEMPTS = 4


class GraphQLEndpoint:
    """POST /graphql (operations) and GET /graphql (GraphiQL in dev mode)."""

    def __init__(self, schema: Schema, settings: Settings) -> None:
        self.schema = schema._schema
        self.settings = settings
        self.preparer = Preparer(
            self.schema,
            Limits(
                max_depth=settings.max_query_depth,
                max_aliases=settings.max_aliases,
                max_tokens=settings.max_tokens,
                max_root_fields=settings.max_root_fields,
                max_list_size=settings.max_list_size,
                max_cost=settings.max_query_cost,
                introspection=settings.dev,
                suggestions=settings.dev,
            ),
        )
        self.fast = FastPath(self.schema, graphql_names_of(Member)) if settings.fast_path else None
        self.fast_writes = WritePath(schema) if settings.fast_path else None

    async def post(self, request: Request) -> Response:
        started = time.perf_counter()

        def observed(response: Response, *answers: Answer) -> Response:
            # Counted by the status sent, not the answer's own: a request error is 200 in
            # application/json, and a batch has one status for all its operations.
            for answer in answers:
                metrics.observe_request(answer.operation, response.status_code, started)
            return response

        media_type = negotiate(request.headers.get("accept"))
        if media_type is None:
            answer = _error_answer(
                406,
                ErrorCode.BAD_REQUEST,
                f"Accept {GRAPHQL_RESPONSE_JSON} or {JSON}: no other response type is served.",
            )
            return observed(self._respond(answer, JSON), answer)
        payload = await self._read_body(request)
        if isinstance(payload, Answer):
            return observed(self._respond(payload, media_type), payload)
        if isinstance(payload, list):
            answers = [await self.run(request, item) for item in payload]
            failed = [a for a in answers if a.status in (401, 429, 503)]
            if failed:  # the whole batch shares the caller and the database: say it once
                response = self._respond(failed[0], media_type)
            else:
                response = Response(orjson.dumps([a.body for a in answers]), media_type=media_type)
            return observed(response, *answers)
        answer = await self.run(request, payload)
        return observed(self._respond(answer, media_type), answer)

    @staticmethod
    def _respond(answer: Answer, media_type: str) -> Response:
        return Response(
            orjson.dumps(answer.body),
            status_code=status_of(
                answer.status, request_error=answer.request_error, media_type=media_type
            ),
            media_type=media_type,
            headers=answer.headers or None,
        )

    async def _read_body(self, request: Request) -> Any:
        """The operation(s) in the body, or an Answer that says what is wrong with it."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error_answer(
                400,
                ErrorCode.BAD_REQUEST,
                "Send the operation as JSON (Content-Type: application/json).",
            )
        limit = self.settings.max_body_bytes
        too_large = _error_answer(
            413, ErrorCode.BAD_REQUEST, f"The request body is larger than {limit} bytes."
        )
        body = await read_limited(request, limit)
        if body is None:
            return too_large
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error_answer(400, ErrorCode.BAD_REQUEST, "The request body is not valid JSON.")
        if isinstance(payload, list):
            if self.settings.max_batch == 0:
                return _error_answer(
                    400, ErrorCode.BAD_REQUEST, "Batched requests are off: send one operation."
                )
            if not payload or len(payload) > self.settings.max_batch:
                return _error_answer(
                    400,
                    ErrorCode.OPERATION_LIMIT_EXCEEDED,
                    f"A batch holds 1 to {self.settings.max_batch} operations.",
                )
        return payload

    @staticmethod
    def _shape(payload: Any) -> tuple[str, dict[str, Any] | None, str | None] | Answer:
        def bad(message: str) -> Answer:
            return _error_answer(400, ErrorCode.BAD_REQUEST, message)

        if not isinstance(payload, dict):
            return bad("A GraphQL request is a JSON object with a `query` string.")
        query = payload.get("query")
        variables = payload.get("variables")
        operation_name = payload.get("operationName")
        if not isinstance(query, str) or not query.strip():
            return bad("A GraphQL request needs a non-empty `query` string.")
        if variables is not None and not isinstance(variables, dict):
            return bad("`variables` must be a JSON object.")
        if operation_name is not None and not isinstance(operation_name, str):
            return bad("`operationName` must be a string.")
        extensions = payload.get("extensions")
        if extensions is not None and not isinstance(extensions, dict):
            return bad("`extensions` must be a JSON object.")
        return query, variables, operation_name

    async def run(self, request: Request, payload: Any) -> Answer:
        shaped = self._shape(payload)
        if isinstance(shaped, Answer):
            return shaped
        query, variables, operation_name = shaped
        prepared = self.preparer.prepare(query)
        if isinstance(prepared, Refusal):
            return _request_error(prepared.errors)
        operation = _operation(prepared, operation_name)
        label = _label(operation)
        problem = (
            variables_problem(
                variables, self.settings.max_list_size, self.settings.max_variables_depth
            )
            if variables
            else None
        )
        if problem is not None:
            code, message = problem
            return _request_error([{"message": message, "extensions": {"code": code.value}}], label)
        answer = await self._execute(request, prepared, variables, operation_name, operation)
        answer.operation = label
        return answer

    async def _execute(
        self,
        request: Request,
        document: DocumentNode,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        operation: OperationDefinitionNode | None,
    ) -> Answer:
        """Run the operation; run it again (rolled back whole each time) while it loses a race
        with another transaction, at most ATTEMPTS times and within the request's one deadline,
        then answer 409 CONFLICT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_seconds
        sqlstate: str | None = None
        request.scope[RATE_COUNTED] = False  # each operation of a batch counts once
        for attempt in range(1, ATTEMPTS + 1):
            if loop.time() >= deadline:
                break
            try:
                return await self._attempt(
                    request, document, variables, operation_name, operation, deadline
                )
            except Exception as exc:
                sqlstate = exc.sqlstate if isinstance(exc, _Contended) else db.contended(exc)
                if sqlstate is None:
                    raise
            metrics.RETRIES.labels(sqlstate).inc()
            log.info(
                "operation.contended",
                operation=_label(operation),
                sqlstate=sqlstate,
                attempt=attempt,
            )
            # A little apart, so that two transactions that deadlocked do not meet again.
            await asyncio.sleep(random.uniform(0, 0.005 * attempt))  # noqa: S311  # not a secret
        log.warning("operation.conflict", operation=_label(operation), sqlstate=sqlstate)
        return _error_answer(
            409,
            ErrorCode.CONFLICT,
            "The change met concurrent changes to the same member and was not made; try again.",
            **{"Retry-After": "1"},
        )

    async def _attempt(
        self,
        request: Request,
        document: DocumentNode,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        operation: OperationDefinitionNode | None,
        deadline: float,
    ) -> Answer:
        read_only = _only(operation, OperationType.QUERY, READ_ONLY_ROOTS)
        if read_only:
            via = Via.RAW_READ
        elif _only(operation, OperationType.MUTATION, RAW_WRITE_ROOTS):
            via = Via.RAW_WRITE
        else:
            via = Via.ENGINE
        boundary: Boundary = request.state.boundary
        outcome: dict[str, Any] = {}
        try:
            async with boundary.operation(
                request, via=via, operation=_label(operation), deadline=deadline
            ) as context:
                result = None
                plan = (
                    self.fast.plan(document, operation, operation_name)
                    if self.fast is not None and read_only
                    else None
                )
                if plan is not None:
                    assert self.fast is not None
                    result = await self.fast.run(
                        plan, context, variables, hide_suggestions=not self.settings.dev
                    )
                write = (
                    self.fast_writes.plan(document, operation, operation_name)
                    if self.fast_writes is not None and via is Via.RAW_WRITE
                    else None
                )
                if write is not None:
                    assert self.fast_writes is not None
                    result = await self.fast_writes.run(
                        write, context, variables, hide_suggestions=not self.settings.dev
                    )
                if result is None:
                    result = await self._run_document(context, document, variables, operation_name)
                errors = [_format_error(e) for e in result.errors or ()]
                outcome = {"data": result.data, "errors": errors}
                failures = [
                    e.original_error
                    for e, (_, unexpected) in zip(result.errors or (), errors, strict=True)
                    if unexpected and e.original_error is not None
                ]
                if failures:
                    if any(db.unavailable(f) for f in failures):
                        raise failures[0]
                    for failure in failures:
                        sqlstate = db.contended(failure)
                        if sqlstate is not None:
                            raise _Contended(sqlstate)
                    for failure in failures:
                        log.error("graphql.unexpected_error", **exception_summary(failure))
                    raise _Rollback
                withheld = [(error, False) for error in context.field_errors]
                outcome["errors"] = errors + withheld if result.data is not None else errors
        except Refused as refused:
            return _error_answer(refused.status, refused.code, refused.message, **refused.headers)
        except _Rollback:
            # Nothing of a failed operation is kept, so nothing of it may be shown either.
            return Answer(500, {"errors": [e for e, _ in outcome["errors"]]})
        shown: list[dict[str, Any]] = [e for e, _ in outcome["errors"]]
        if outcome["data"] is None and shown and not any("path" in e for e in shown):
            # Nothing executed: variables that do not coerce, no such operation.
            return _request_error(shown)
        body: dict[str, Any] = {"errors": shown} if shown else {}
        body["data"] = outcome["data"]
        return Answer(200, body)

    async def _run_document(
        self,
        context: Context,
        document: DocumentNode,
        variables: Mapping[str, Any] | None,
        operation_name: str | None,
    ) -> ExecutionResult:
        """graphql-core's execute on a prepared document, with Strawberry's resolve info."""
        result = execute(
            self.schema,
            document,
            context_value=context,
            variable_values=dict(variables) if variables else None,
            operation_name=operation_name,
            hide_suggestions=not self.settings.dev,
            is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]
            executor_class=StrawberryGraphQLCoreExecutionContext,
        )
        if isawaitable(result):
            result = await result
        assert isinstance(result, ExecutionResult)
        return result

    async def ide(self, request: Request) -> Response:
        if not self.settings.graphiql:
            refused = Refused(405, ErrorCode.BAD_REQUEST, "Send GraphQL operations with POST.")
            refused.headers["Allow"] = "POST"
            return refused.response()
        return HTMLResponse(get_graphql_ide_html())
