"""The schema object, built from the root types.

No schema extensions: the HTTP endpoint prepares documents itself (parse, validation and limits,
cached; see gateway.web.operations) and executes them with graphql-core, so nothing wraps each
request or each field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import strawberry
from strawberry.schema.config import StrawberryConfig

from schema.audit import LONG_SCALAR, Long
from schema.mutation import Mutation
from schema.query import Query

SDL_PATH = Path(__file__).resolve().parent / "schema.graphql"


def build_schema(**kwargs: Any) -> strawberry.Schema:
    config = StrawberryConfig(scalar_map={Long: LONG_SCALAR})
    return strawberry.Schema(query=Query, mutation=Mutation, config=config, **kwargs)


schema = build_schema()
