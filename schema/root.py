"""The schema object, built from the root types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.types import ExecutionContext

from schema.mutation import Mutation
from schema.query import Query

SDL_PATH = Path(__file__).resolve().parent / "schema.graphql"


class TillitSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Errors are logged once, without personal data, by the HTTP endpoint that answers them.
        return None


def build_schema(**kwargs: Any) -> TillitSchema:
    return TillitSchema(
        query=Query,
        mutation=Mutation,
        # Factories: a fresh extension per request; the caches themselves are module-level LRUs.
        extensions=[lambda: ParserCache(maxsize=256), lambda: ValidationCache(maxsize=256)],
        **kwargs,
    )


schema = build_schema()
