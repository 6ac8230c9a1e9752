"""The purpose policy: read and validate the TOML file, load it into the database, read it back.

Purposes are data. The file in the repository is the source; the database holds what is in force,
so that every worker and host decides on the same policy.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import delete, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain import Category, ConsentMethod, LegalBasis, LocalizedText, Purpose
from gateway.errors import PolicyFileError
from gateway.store import models
from gateway.store.db import Raw, raw_of

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent / "purposes.toml"
_KEY = r"^[a-z][a-z0-9_]{0,63}$"


class _Text(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    nb: str = Field(min_length=1, max_length=4000)
    en: str = Field(min_length=1, max_length=4000)


class _SignUp(_Text):
    """What the sign-up form shows for a consent purpose, and whether it may be tied to joining."""

    conditional: bool = False


class PurposeSpec(BaseModel):
    """One `[purposes.<key>]` table of the policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    legal_basis: LegalBasis
    categories: list[Category] = Field(min_length=1)
    notice_version: str = Field(min_length=1, max_length=32)
    accepted_notice_versions: list[str] | None = None
    consent_method: ConsentMethod | None = None
    consent_lifetime_days: int | None = Field(default=None, ge=1, le=3650)
    title: _Text
    description: _Text
    sign_up: _SignUp | None = None

    @field_validator("categories")
    @classmethod
    def _no_duplicate_categories(cls, value: list[Category]) -> list[Category]:
        if len(set(value)) != len(value):
            raise ValueError("categories are listed twice")
        return value

    @model_validator(mode="after")
    def _consent_fields_match_basis(self) -> PurposeSpec:
        consent_only = {
            "consent_method": self.consent_method,
            "consent_lifetime_days": self.consent_lifetime_days,
            "accepted_notice_versions": self.accepted_notice_versions,
            "sign_up": self.sign_up,
        }
        if self.legal_basis is LegalBasis.CONSENT:
            for name in ("consent_method", "consent_lifetime_days"):
                if consent_only[name] is None:
                    raise ValueError(f"a CONSENT purpose needs {name}")
            accepted = self.accepted_notice_versions
            if accepted is not None and self.notice_version not in accepted:
                raise ValueError("accepted_notice_versions must include notice_version")
            if (
                self.sign_up is not None
                and self.sign_up.conditional
                and self.consent_method is not ConsentMethod.CONDITIONAL
            ):
                # The source document: conditional consent is tied to the terms of joining, and
                # only a purpose that accepts it may be offered that way.
                raise ValueError(
                    "sign_up.conditional needs consent_method = CONDITIONAL: a purpose that "
                    "needs explicit consent cannot be tied to joining"
                )
        else:
            given = [name for name, value in consent_only.items() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to CONSENT purposes, "
                    f"not {self.legal_basis.value}"
                )
        enriched = [c.value for c in self.categories if c.is_enriched]
        if enriched and self.legal_basis is not LegalBasis.CONSENT:
            # Enrichment adds new data from third parties; the source document: it needs consent.
            raise ValueError(f"enriched categories ({', '.join(enriched)}) need a CONSENT purpose")
        return self

    def to_purpose(self, key: str) -> Purpose:
        lifetime = (
            dt.timedelta(days=self.consent_lifetime_days) if self.consent_lifetime_days else None
        )
        accepted = self.accepted_notice_versions or [self.notice_version]
        return Purpose(
            key=key,
            legal_basis=self.legal_basis,
            categories=frozenset(self.categories),
            title=LocalizedText(nb=self.title.nb, en=self.title.en),
            description=LocalizedText(nb=self.description.nb, en=self.description.en),
            notice_version=self.notice_version,
            accepted_notice_versions=frozenset(accepted),
            required_consent_method=self.consent_method,
            consent_lifetime=lifetime,
            sign_up_wording=(
                LocalizedText(nb=self.sign_up.nb, en=self.sign_up.en) if self.sign_up else None
            ),
            conditional_at_sign_up=bool(self.sign_up and self.sign_up.conditional),
        )


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    purposes: dict[str, PurposeSpec] = Field(min_length=1)

    @field_validator("purposes")
    @classmethod
    def _keys_are_identifiers(cls, value: dict[str, PurposeSpec]) -> dict[str, PurposeSpec]:
        for key in value:
            if not re.match(_KEY, key):
                raise ValueError(
                    f"purpose key {key!r} must be lower_snake_case, at most 64 characters"
                )
        return value


def read_policy_file(path: Path = DEFAULT_POLICY_FILE) -> list[Purpose]:
    """Parse and validate a policy file; raise PolicyFileError with the line and reason."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyFileError(shown, "file not found") from None
    except UnicodeDecodeError:
        raise PolicyFileError(shown, "not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else None
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise PolicyFileError(shown, f"invalid TOML: {reason}", line) from None
    try:
        spec = PolicySpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        loc = [str(part) for part in error["loc"]]
        reason = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(loc)
        raise PolicyFileError(
            shown, f"{where}: {reason}" if where else reason, _locate(text, loc)
        ) from None
    return [purpose_spec.to_purpose(key) for key, purpose_spec in spec.purposes.items()]


def _locate(text: str, loc: Sequence[str]) -> int | None:
    """Best-effort line of a validation error: the key's line inside its table, else the table."""
    lines = text.splitlines()
    if list(loc) == ["purposes"]:
        # A key-level error: point at the first table whose key is not an identifier.
        for number, line in enumerate(lines, start=1):
            table = re.match(r'^\s*\[\s*purposes\.("?)([^\]"]+)\1\s*\]', line)
            if table and not re.match(_KEY, table.group(2)):
                return number
        return None
    if len(loc) < 2 or loc[0] != "purposes":
        field = loc[0] if loc else None
        for number, line in enumerate(lines, start=1):
            if field and re.match(rf"\s*{re.escape(field)}\s*=", line):
                return number
        return 1
    key = loc[1]
    header = re.compile(rf"^\s*\[\s*purposes\.{re.escape(key)}\s*\]")
    start = next((n for n, line in enumerate(lines, start=1) if header.match(line)), None)
    if start is None:
        return None
    if len(loc) < 3:
        return start
    field = loc[2]
    for number in range(start + 1, len(lines) + 1):
        line = lines[number - 1]
        if line.lstrip().startswith("["):
            break
        if re.match(rf"\s*{re.escape(field)}\s*[.=]", line):
            return number
    return start


@dataclass(frozen=True)
class LoadSummary:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    retired: list[str]


def _row(purpose: Purpose) -> dict[str, Any]:
    return {
        "key": purpose.key,
        "legal_basis": purpose.legal_basis.value,
        "title_nb": purpose.title.nb,
        "title_en": purpose.title.en,
        "description_nb": purpose.description.nb,
        "description_en": purpose.description.en,
        "required_consent_method": (
            purpose.required_consent_method.value if purpose.required_consent_method else None
        ),
        "notice_version": purpose.notice_version,
        "accepted_notice_versions": sorted(purpose.accepted_notice_versions),
        "consent_lifetime": purpose.consent_lifetime,
        "retired": False,
        "sign_up_nb": purpose.sign_up_wording.nb if purpose.sign_up_wording else None,
        "sign_up_en": purpose.sign_up_wording.en if purpose.sign_up_wording else None,
        "sign_up_conditional": purpose.conditional_at_sign_up,
    }


async def load_purposes(connection: AsyncConnection, purposes: Sequence[Purpose]) -> LoadSummary:
    """Make the database's purposes equal the given ones; idempotent. Does not commit."""
    existing = {
        p.key: p for p in await fetch_purposes(await raw_of(connection), include_retired=True)
    }
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for purpose in purposes:
        before = existing.get(purpose.key)
        if before == purpose:
            unchanged.append(purpose.key)
            continue
        row = _row(purpose)
        statement = pg_insert(models.Purpose).values(row)
        await connection.execute(
            statement.on_conflict_do_update(
                index_elements=[models.Purpose.key],
                set_={
                    **{k: statement.excluded[k] for k in row if k != "key"},
                    "updated_at": statement.excluded.updated_at,
                },
            )
        )
        await connection.execute(
            delete(models.PurposeCategory).where(models.PurposeCategory.purpose_key == purpose.key)
        )
        await connection.execute(
            insert(models.PurposeCategory),
            [{"purpose_key": purpose.key, "category": c.value} for c in sorted(purpose.categories)],
        )
        (created if before is None else updated).append(purpose.key)
    in_file = {p.key for p in purposes}
    retired = sorted(k for k, p in existing.items() if k not in in_file and not p.retired)
    if retired:
        await connection.execute(
            update(models.Purpose).where(models.Purpose.key.in_(retired)).values(retired=True)
        )
    return LoadSummary(created, updated, unchanged, retired)


# Read on every request that decides: one statement, raw SQL (see gateway.store.db.Raw).
_PURPOSES = (
    "SELECT p.key, p.legal_basis, p.title_nb, p.title_en, p.description_nb, p.description_en, "
    "p.required_consent_method, p.notice_version, p.accepted_notice_versions, "
    "p.consent_lifetime, p.retired, p.sign_up_nb, p.sign_up_en, p.sign_up_conditional, "
    "coalesce(array_agg(c.category) FILTER (WHERE c.category IS NOT NULL), '{}') AS categories "
    "FROM purposes p LEFT JOIN purpose_categories c ON c.purpose_key = p.key "
    "WHERE $1 OR NOT p.retired GROUP BY p.key ORDER BY p.key"
)


async def fetch_purposes(connection: Raw, *, include_retired: bool = False) -> list[Purpose]:
    """All purposes in force (or also the retired ones), ordered by key."""
    rows = await connection.fetch(_PURPOSES, include_retired)
    return [
        Purpose(
            key=row["key"],
            legal_basis=LegalBasis(row["legal_basis"]),
            categories=frozenset(Category(c) for c in row["categories"]),
            title=LocalizedText(nb=row["title_nb"], en=row["title_en"]),
            description=LocalizedText(nb=row["description_nb"], en=row["description_en"]),
            notice_version=row["notice_version"],
            accepted_notice_versions=frozenset(row["accepted_notice_versions"]),
            required_consent_method=(
                ConsentMethod(row["required_consent_method"])
                if row["required_consent_method"]
                else None
            ),
            consent_lifetime=row["consent_lifetime"],
            retired=row["retired"],
            sign_up_wording=(
                LocalizedText(nb=row["sign_up_nb"], en=row["sign_up_en"])
                if row["sign_up_nb"] is not None
                else None
            ),
            conditional_at_sign_up=row["sign_up_conditional"],
        )
        for row in rows
    ]
