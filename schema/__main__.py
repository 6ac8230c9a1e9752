"""`python -m schema` prints the SDL; `python -m schema --write` rewrites schema/schema.graphql."""

import sys

from schema import SDL_PATH, schema


def main() -> None:
    sdl = schema.as_str() + "\n"
    if "--write" in sys.argv:
        SDL_PATH.write_text(sdl, encoding="utf-8")
        print(f"wrote {SDL_PATH}")
    else:
        sys.stdout.write(sdl)


main()
