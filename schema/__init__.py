"""The GraphQL surface: types, inputs, enums, the field→category map and the committed SDL."""

from schema.root import SDL_PATH, build_schema, schema

__all__ = ["SDL_PATH", "build_schema", "schema"]
