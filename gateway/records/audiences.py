"""Audiences: the members a purpose may reach at this moment, selected on fields it releases.

One statement decides for many members: the access decision as SQL (`gateway.access.sql`, made
from the policy), joined to each member's newest consent for the purpose or their objections, with
the selection (`Selection`) and keyset pagination by member id (stable while members change: a
page starts after the last id of the one before). Pages go to the GraphQL `audience` field,
which audits each member released through the operation's trail; exports (`gateway.records.
audience_export`) run the same selection with their access events written in the statement.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.access import sql as decision_sql
from gateway.domain import (
    Category,
    EnrichedField,
    ErrorCode,
    ProfileField,
    Purpose,
    Tier,
)
from gateway.errors import BadUserInput, Refused
from gateway.records.members import (
    ENRICHED_VALUES,
    MEMBER_COLUMNS,
    MemberRecord,
    enrichment_of,
    record_of,
)
from gateway.store.db import Raw

MAX_LIST = 100  # values in one filter list
# The lowest member id: a keyset's first page starts at it (`id >= FIRST_ID`), the next ones after
# their last id (`id > $n`): conditions the index serves, where `$n IS NULL OR id > $n` under a
# generic plan would read every member.
FIRST_ID = uuid.UUID(int=0)


def after_sql(after: uuid.UUID | None, parameter: str) -> str:
    """The keyset condition on `m.id` for a page after `after` (None: the first page)."""
    return f"m.id {'>=' if after is None else '>'} {parameter}::uuid"


MAX_TEXT = 64  # characters in one filter value


class Filter(enum.StrEnum):
    """What `where` may name: each reads one member field, in that field's data category."""

    TIER = "tier"
    MEMBER_SINCE = "member_since"
    POSTAL_CODE = "postal_code"
    COUNTRY = "country"
    INCOME_BAND = "income_band"
    HOUSEHOLD_SIZE = "household_size"
    LIFESTYLE_SEGMENT = "lifestyle_segment"
    INTERESTS = "interests"

    @property
    def category(self) -> Category:
        if self in (Filter.TIER, Filter.MEMBER_SINCE):
            return Category.MEMBERSHIP
        if self in (Filter.POSTAL_CODE, Filter.COUNTRY):
            return ProfileField(self.value).category
        return EnrichedField(self.value).category

    @property
    def graphql_name(self) -> str:
        head, *rest = self.value.split("_")
        return head + "".join(part.title() for part in rest)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which of the purpose's audience to take. Every condition is on a field the purpose may
    release (see `refuse_outside`), so a selection can never reveal a withheld value."""

    tiers: tuple[Tier, ...] = ()
    member_since_from: dt.date | None = None
    member_since_to: dt.date | None = None
    postal_code_prefixes: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    income_bands: tuple[str, ...] = ()
    household_size_min: int | None = None
    household_size_max: int | None = None
    lifestyle_segments: tuple[str, ...] = ()
    interests: tuple[str, ...] = ()

    def named(self) -> list[Filter]:
        """The filters this selection uses."""
        used = {
            Filter.TIER: bool(self.tiers),
            Filter.MEMBER_SINCE: self.member_since_from is not None
            or self.member_since_to is not None,
            Filter.POSTAL_CODE: bool(self.postal_code_prefixes),
            Filter.COUNTRY: bool(self.countries),
            Filter.INCOME_BAND: bool(self.income_bands),
            Filter.HOUSEHOLD_SIZE: self.household_size_min is not None
            or self.household_size_max is not None,
            Filter.LIFESTYLE_SEGMENT: bool(self.lifestyle_segments),
            Filter.INTERESTS: bool(self.interests),
        }
        return [f for f, on in used.items() if on]

    def check(self) -> None:
        """BadUserInput when a value is out of shape (before any statement runs)."""
        lists = {
            "tier": self.tiers,
            "postalCodePrefix": self.postal_code_prefixes,
            "country": self.countries,
            "incomeBand": self.income_bands,
            "lifestyleSegment": self.lifestyle_segments,
            "interests": self.interests,
        }
        for name, values in lists.items():
            if len(values) > MAX_LIST:
                raise BadUserInput(f"At most {MAX_LIST} values in `{name}`.", argument=name)
            for value in values:
                if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or "\x00" in value:
                    raise BadUserInput(
                        f"Each `{name}` value is 1 to {MAX_TEXT} characters.", argument=name
                    )
        if (
            self.member_since_from is not None
            and self.member_since_to is not None
            and self.member_since_from > self.member_since_to
        ):
            raise BadUserInput("`memberSinceFrom` is after `memberSinceTo`.", argument="where")
        for name, number in (
            ("householdSizeMin", self.household_size_min),
            ("householdSizeMax", self.household_size_max),
        ):
            if number is not None and not 0 <= number <= 1000:
                raise BadUserInput(f"`{name}` is 0 to 1000.", argument=name)

    def document(self) -> dict[str, Any]:
        """The selection as JSON (stored with an export; a sync must select the same way)."""
        document: dict[str, Any] = {}
        for name, value in (
            ("tier", [t.value for t in self.tiers]),
            ("memberSinceFrom", self.member_since_from and self.member_since_from.isoformat()),
            ("memberSinceTo", self.member_since_to and self.member_since_to.isoformat()),
            ("postalCodePrefix", list(self.postal_code_prefixes)),
            ("country", list(self.countries)),
            ("incomeBand", list(self.income_bands)),
            ("householdSizeMin", self.household_size_min),
            ("householdSizeMax", self.household_size_max),
            ("lifestyleSegment", list(self.lifestyle_segments)),
            ("interests", list(self.interests)),
        ):
            if value not in (None, []):
                document[name] = value
        return document

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Selection:
        """The selection a `document()` describes; BadUserInput for anything else (an export's
        `where` parameter is such a document)."""
        known = {
            "tier",
            "memberSinceFrom",
            "memberSinceTo",
            "postalCodePrefix",
            "country",
            "incomeBand",
            "householdSizeMin",
            "householdSizeMax",
            "lifestyleSegment",
            "interests",
        }
        unknown = sorted(set(document) - known)
        if unknown:
            raise BadUserInput(
                f"`where` does not know {', '.join(unknown)}; it takes {', '.join(sorted(known))}.",
                argument="where",
            )

        def texts(name: str) -> tuple[str, ...]:
            value = document.get(name, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadUserInput(f"`{name}` is a list of text values.", argument=name)
            return tuple(value)

        def date(name: str) -> dt.date | None:
            value = document.get(name)
            if value is None:
                return None
            try:
                return dt.date.fromisoformat(str(value))
            except ValueError:
                raise BadUserInput(f"`{name}` is a date (YYYY-MM-DD).", argument=name) from None

        def number(name: str) -> int | None:
            value = document.get(name)
            if value is None:
                return None
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadUserInput(f"`{name}` is a whole number.", argument=name)
            return value

        tiers = []
        for value in texts("tier"):
            try:
                tiers.append(Tier(value))
            except ValueError:
                raise BadUserInput(
                    f"`tier` is one of {', '.join(t.value for t in Tier)}.", argument="tier"
                ) from None
        selection = cls(
            tiers=tuple(tiers),
            member_since_from=date("memberSinceFrom"),
            member_since_to=date("memberSinceTo"),
            postal_code_prefixes=texts("postalCodePrefix"),
            countries=texts("country"),
            income_bands=texts("incomeBand"),
            household_size_min=number("householdSizeMin"),
            household_size_max=number("householdSizeMax"),
            lifestyle_segments=texts("lifestyleSegment"),
            interests=texts("interests"),
        )
        selection.check()
        return selection


def outside(purpose: Purpose, selection: Selection) -> list[Filter]:
    """The filters on fields the purpose does not release (each one would reveal a withheld
    value through who is selected)."""
    return [f for f in selection.named() if f.category not in purpose.categories]


def refuse_outside(purpose: Purpose, selection: Selection) -> None:
    """CATEGORY_NOT_IN_PURPOSE when the selection names a field the purpose does not release."""
    refused = outside(purpose, selection)
    if refused:
        names = ", ".join(f.graphql_name for f in refused)
        raise Refused(
            ErrorCode.CATEGORY_NOT_IN_PURPOSE,
            f"Purpose {purpose.key} does not release what `where` selects on ({names}); a "
            "selection may use only fields the purpose releases.",
            purpose=purpose.key,
            filters=[f.graphql_name for f in refused],
        )


class Params:
    """Positional parameters of a statement being built."""

    def __init__(self, *first: Any) -> None:
        self.values: list[Any] = list(first)

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def _enriched(field_: EnrichedField, condition: str) -> str:
    return (
        "EXISTS (SELECT 1 FROM enrichment_records r WHERE r.member_id = m.id "
        f"AND r.field = {decision_sql.literal(field_.value)} AND {condition})"
    )


def selection_sql(selection: Selection, params: Params) -> str:
    """The selection's conditions on `m` (members), ANDed; 'true' when it selects everyone."""
    clauses = []
    s = selection
    if s.tiers:
        clauses.append(f"m.tier = ANY({params.add([t.value for t in s.tiers], 'text[]')})")
    if s.member_since_from is not None:
        clauses.append(f"m.member_since >= {params.add(s.member_since_from, 'date')}")
    if s.member_since_to is not None:
        clauses.append(f"m.member_since <= {params.add(s.member_since_to, 'date')}")
    if s.postal_code_prefixes:
        # A prefix, not a pattern: LIKE's own characters in it match themselves.
        prefixes = params.add(list(s.postal_code_prefixes), "text[]")
        clauses.append(
            f"EXISTS (SELECT 1 FROM unnest({prefixes}) AS p(prefix) "
            "WHERE left(m.postal_code, length(p.prefix)) = p.prefix)"
        )
    if s.countries:
        clauses.append(f"m.country = ANY({params.add([c.upper() for c in s.countries], 'text[]')})")
    if s.income_bands:
        values = params.add(list(s.income_bands), "text[]")
        clauses.append(_enriched(EnrichedField.INCOME_BAND, f"r.value #>> '{{}}' = ANY({values})"))
    if s.household_size_min is not None or s.household_size_max is not None:
        bounds = ["jsonb_typeof(r.value) = 'number'"]
        if s.household_size_min is not None:
            bounds.append(f"(r.value)::numeric >= {params.add(s.household_size_min, 'int')}")
        if s.household_size_max is not None:
            bounds.append(f"(r.value)::numeric <= {params.add(s.household_size_max, 'int')}")
        clauses.append(_enriched(EnrichedField.HOUSEHOLD_SIZE, " AND ".join(bounds)))
    if s.lifestyle_segments:
        values = params.add(list(s.lifestyle_segments), "text[]")
        clauses.append(
            _enriched(EnrichedField.LIFESTYLE_SEGMENT, f"r.value #>> '{{}}' = ANY({values})")
        )
    if s.interests:
        values = params.add(list(s.interests), "text[]")
        clauses.append(
            _enriched(
                EnrichedField.INTERESTS, f"jsonb_typeof(r.value) = 'array' AND r.value ?| {values}"
            )
        )
    return " AND ".join(clauses) if clauses else "true"


def state_joins(purpose: Purpose, purpose_param: str) -> str:
    """The joins that give the decision its state columns (`gateway.access.sql.State`)."""
    joins = []
    if decision_sql.reads_consent(purpose):
        # LIMIT: see gateway.records.members (keeps the lookup an index probe per member).
        joins.append(
            "LEFT JOIN LATERAL (SELECT kind, id, method, notice_version, expires_at "
            f"FROM consent_states WHERE member_id = m.id AND purpose_key = {purpose_param} "
            "LIMIT 1) AS c ON true"
        )
    if decision_sql.reads_objection(purpose):
        joins.append(
            "LEFT JOIN LATERAL (SELECT true AS objected FROM objections "
            f"WHERE member_id = m.id AND purpose_key = {purpose_param} AND lifted_at IS NULL "
            "LIMIT 1) AS o ON true"
        )
    return "\n".join(joins)


# Not frozen: made per member of a page (see MemberRecord in gateway.records.members).
@dataclass(slots=True)
class AudienceMember:
    record: MemberRecord
    enrichment: dict[EnrichedField, Any]
    consent_ids: tuple[uuid.UUID, ...]


@dataclass(slots=True)
class AudiencePage:
    members: list[AudienceMember] = field(default_factory=list)
    has_next_page: bool = False


async def audience_page(
    connection: Raw,
    purpose: Purpose,
    selection: Selection,
    *,
    now: dt.datetime,
    first: int,
    after: uuid.UUID | None,
) -> AudiencePage:
    """The next `first` members (by id, after `after`) for whom the purpose's legal basis holds at
    `now` and whom the selection takes, with their base and enriched values. One statement."""
    params = Params(now, purpose.key, after or FIRST_ID, first + 1)
    state = decision_sql.State(now="p.now")
    failed = decision_sql.failure(purpose, state)
    relied = decision_sql.relied_on(purpose, state, failed)
    where = selection_sql(selection, params)
    statement = f"""
        SELECT {MEMBER_COLUMNS}, e.fields, e.enriched_values, e.obtained_under,
               {relied} AS consent_ids
        FROM (SELECT $1::timestamptz AS now, $2::text AS purpose) AS p
        CROSS JOIN members m
        {state_joins(purpose, "p.purpose")}
        {ENRICHED_VALUES}
        WHERE {after_sql(after, "$3")} AND ({failed}) IS NULL AND {where}
        ORDER BY m.id
        LIMIT $4::int
    """
    rows = await connection.fetch(statement, *params.values)
    page = AudiencePage(has_next_page=len(rows) > first)
    for row in rows[:first]:
        enrichment, _ = enrichment_of(row)
        page.members.append(
            AudienceMember(record_of(row), enrichment, tuple(row["consent_ids"] or ()))
        )
    return page


@dataclass(frozen=True, slots=True)
class SetDecision:
    """`decide` for one member, as the set-based statement makes it."""

    member_id: uuid.UUID
    released: frozenset[str]
    withheld: Mapping[str, str]
    outcome: str
    consent_ids: tuple[uuid.UUID, ...]


async def decide_members(
    connection: Raw,
    purpose: Purpose,
    fields: Mapping[str, Category],
    member_ids: Sequence[uuid.UUID],
    *,
    now: dt.datetime,
) -> dict[uuid.UUID, SetDecision]:
    """The decision for each existing member among `member_ids`, made by PostgreSQL in one
    statement from the SQL the policy generates: what an access event of each would record."""
    answer = decision_sql.fields(purpose, fields, decision_sql.State(now="p.now"))
    statement = f"""
        SELECT m.id, {answer.released} AS released, ({answer.withheld})::text AS withheld,
               {answer.outcome} AS outcome, {answer.consent_ids} AS consent_ids
        FROM (SELECT $1::timestamptz AS now, $2::text AS purpose) AS p
        CROSS JOIN members m
        {state_joins(purpose, "p.purpose")}
        WHERE m.id = ANY($3::uuid[])
    """
    rows = await connection.fetch(statement, now, purpose.key, list(member_ids))
    return {
        row["id"]: SetDecision(
            row["id"],
            frozenset(row["released"]),
            orjson.loads(row["withheld"]),
            row["outcome"],
            tuple(row["consent_ids"] or ()),
        )
        for row in rows
    }
