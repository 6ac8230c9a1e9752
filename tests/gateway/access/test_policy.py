"""The access decision as a table: one row per reason and legal basis, and the combinations."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from dataclasses import replace

import pytest

from gateway.access.policy import Decisions, decide, purpose_for
from gateway.domain import (
    Anonymous,
    Category,
    ClientPrincipal,
    ConsentEventKind,
    ConsentMethod,
    ConsentState,
    ErrorCode,
    LegalBasis,
    LocalizedText,
    MemberPrincipal,
    MemberState,
    Principal,
    Purpose,
    Role,
)
from gateway.errors import Forbidden, PurposeNotPermitted, Unauthenticated, UnknownPurpose

NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
TEXT = LocalizedText("x", "x")
GRANT = uuid.UUID(int=7)


def purpose(key: str, basis: LegalBasis, *categories: Category, **extra: object) -> Purpose:
    fields: dict[str, object] = {
        "key": key,
        "legal_basis": basis,
        "categories": frozenset(categories),
        "title": TEXT,
        "description": TEXT,
        "notice_version": "2",
        "accepted_notice_versions": frozenset({"2"}),
    }
    if basis is LegalBasis.CONSENT:
        fields["required_consent_method"] = ConsentMethod.EXPLICIT
        fields["consent_lifetime"] = dt.timedelta(days=365)
    fields.update(extra)
    return Purpose(**fields)  # type: ignore[arg-type]


CONTRACT = purpose("service", LegalBasis.CONTRACT, Category.CONTACT)
OFFERS = purpose("offers", LegalBasis.CONSENT, Category.ENRICHED_LIFESTYLE)
INSIGHT = purpose(
    "insight",
    LegalBasis.CONSENT,
    Category.ENRICHED_DEMOGRAPHICS,
    required_consent_method=ConsentMethod.CONDITIONAL,
    accepted_notice_versions=frozenset({"1", "2"}),
)
QUALITY = purpose("quality", LegalBasis.LEGITIMATE_INTEREST, Category.ADDRESS)
LEGAL = purpose("bookkeeping", LegalBasis.LEGAL_OBLIGATION, Category.MEMBERSHIP)
PURPOSES = {p.key: p for p in (CONTRACT, OFFERS, INSIGHT, QUALITY, LEGAL)}

APP = ClientPrincipal(uuid.uuid4(), "shop", Role.APP, frozenset(PURPOSES), frozenset())


def granted(
    method: ConsentMethod = ConsentMethod.EXPLICIT,
    notice: str = "2",
    expires: dt.datetime = NOW + dt.timedelta(days=30),
) -> ConsentState:
    return ConsentState(ConsentEventKind.GRANTED, GRANT, method, notice, expires)


WITHDRAWN = ConsentState(ConsentEventKind.WITHDRAWN, None, None, None, None)
EXPIRED_EVENT = ConsentState(ConsentEventKind.EXPIRED, None, None, None, None)
ACTIVE = MemberState(membership_active=True)


def consents(purpose_key: str, state: ConsentState) -> MemberState:
    return MemberState(membership_active=True, consents={purpose_key: state})


@pytest.mark.parametrize(
    ("purpose_", "field", "category", "state", "expected"),
    [
        # CONTRACT
        (CONTRACT, "email", Category.CONTACT, ACTIVE, None),
        (
            CONTRACT,
            "email",
            Category.CONTACT,
            MemberState(membership_active=False),
            ErrorCode.MEMBERSHIP_INACTIVE,
        ),
        (
            CONTRACT,
            "income_band",
            Category.ENRICHED_DEMOGRAPHICS,
            ACTIVE,
            ErrorCode.CATEGORY_NOT_IN_PURPOSE,
        ),
        # CONSENT
        (OFFERS, "segment", Category.ENRICHED_LIFESTYLE, consents("offers", granted()), None),
        (OFFERS, "segment", Category.ENRICHED_LIFESTYLE, ACTIVE, ErrorCode.CONSENT_REQUIRED),
        (
            OFFERS,
            "segment",
            Category.ENRICHED_LIFESTYLE,
            consents("offers", WITHDRAWN),
            ErrorCode.CONSENT_WITHDRAWN,
        ),
        (
            OFFERS,
            "segment",
            Category.ENRICHED_LIFESTYLE,
            consents("offers", granted(expires=NOW - dt.timedelta(seconds=1))),
            ErrorCode.CONSENT_EXPIRED,
        ),
        (
            OFFERS,
            "segment",
            Category.ENRICHED_LIFESTYLE,
            consents("offers", EXPIRED_EVENT),
            ErrorCode.CONSENT_EXPIRED,
        ),
        # explicit required, conditional held
        (
            OFFERS,
            "segment",
            Category.ENRICHED_LIFESTYLE,
            consents("offers", granted(ConsentMethod.CONDITIONAL)),
            ErrorCode.CONSENT_METHOD_INSUFFICIENT,
        ),
        # notice bumped past the version consented to
        (
            OFFERS,
            "segment",
            Category.ENRICHED_LIFESTYLE,
            consents("offers", granted(notice="1")),
            ErrorCode.NOTICE_OUTDATED,
        ),
        # a consent for another purpose does not count
        (
            OFFERS,
            "segment",
            Category.ENRICHED_LIFESTYLE,
            consents("insight", granted()),
            ErrorCode.CONSENT_REQUIRED,
        ),
        # conditional accepted, and explicit is stronger than conditional
        (
            INSIGHT,
            "income",
            Category.ENRICHED_DEMOGRAPHICS,
            consents("insight", granted(ConsentMethod.CONDITIONAL)),
            None,
        ),
        (INSIGHT, "income", Category.ENRICHED_DEMOGRAPHICS, consents("insight", granted()), None),
        # an older notice the policy still accepts
        (
            INSIGHT,
            "income",
            Category.ENRICHED_DEMOGRAPHICS,
            consents("insight", granted(ConsentMethod.CONDITIONAL, notice="1")),
            None,
        ),
        # LEGITIMATE_INTEREST
        (QUALITY, "address", Category.ADDRESS, ACTIVE, None),
        (
            QUALITY,
            "address",
            Category.ADDRESS,
            MemberState(membership_active=True, objections=frozenset({"quality"})),
            ErrorCode.OBJECTED,
        ),
        # LEGAL_OBLIGATION
        (LEGAL, "points", Category.MEMBERSHIP, MemberState(membership_active=False), None),
    ],
)
def test_decision_table(
    purpose_: Purpose,
    field: str,
    category: Category,
    state: MemberState,
    expected: ErrorCode | None,
) -> None:
    decision = decide(purpose_, {field: category}, state, NOW)

    if expected is None:
        assert decision.released == {field}
        assert decision.withheld == {}
    else:
        assert decision.released == frozenset()
        assert decision.withheld[field].code is expected


def test_consent_reasons_say_what_would_release_the_field() -> None:
    decision = decide(OFFERS, {"segment": Category.ENRICHED_LIFESTYLE}, ACTIVE, NOW)

    assert decision.withheld["segment"].hints == {
        "requiredMethod": "EXPLICIT",
        "noticeVersion": "2",
    }


def test_released_consent_is_named() -> None:
    decision = decide(
        OFFERS, {"segment": Category.ENRICHED_LIFESTYLE}, consents("offers", granted()), NOW
    )

    assert decision.consent_ids == (GRANT,)


def test_withdrawn_then_granted_again_releases() -> None:
    state = consents("offers", granted())  # the newest event wins; history is the loader's job

    assert decide(OFFERS, {"s": Category.ENRICHED_LIFESTYLE}, state, NOW).released == {"s"}


def test_partial_read_releases_base_and_withholds_the_rest() -> None:
    fields = {"email": Category.CONTACT, "income_band": Category.ENRICHED_DEMOGRAPHICS}

    decision = decide(CONTRACT, fields, ACTIVE, NOW)

    assert decision.released == {"email"}
    assert decision.withheld["income_band"].code is ErrorCode.CATEGORY_NOT_IN_PURPOSE


@pytest.mark.parametrize(
    ("caller", "key", "error"),
    [
        (Anonymous(), "service", Unauthenticated),
        (MemberPrincipal(uuid.uuid4()), "service", Forbidden),
        (replace(APP, role=Role.AUDITOR), "service", Forbidden),
        (APP, "telemarketing", UnknownPurpose),
        (replace(APP, purposes=frozenset({"service"})), "offers", PurposeNotPermitted),
        (APP, "retired", UnknownPurpose),
    ],
)
def test_caller_must_be_an_app_allowed_the_declared_purpose(
    caller: Principal, key: str, error: type[Exception]
) -> None:
    purposes = {**PURPOSES, "retired": replace(CONTRACT, key="retired", retired=True)}

    with pytest.raises(error):
        purpose_for(caller, key, purposes)


def test_allowed_caller_gets_the_purpose() -> None:
    assert purpose_for(APP, "offers", PURPOSES) is OFFERS


def _states() -> list[MemberState]:
    """Every kind of member state the table above covers, each twice with its own grant."""
    states = [
        ACTIVE,
        MemberState(membership_active=False),
        MemberState(membership_active=True, objections=frozenset({"quality"})),
    ]
    for key in ("offers", "insight"):
        for state in (
            granted(),
            granted(ConsentMethod.CONDITIONAL),
            granted(notice="1"),
            granted(ConsentMethod.CONDITIONAL, notice="1"),
            granted(expires=NOW - dt.timedelta(seconds=1)),
            WITHDRAWN,
            EXPIRED_EVENT,
        ):
            for grant in (uuid.UUID(int=1), uuid.UUID(int=2)):
                own = replace(state, grant_id=grant) if state.grant_id else state
                states.append(MemberState(membership_active=True, consents={key: own}))
    return states


@pytest.mark.parametrize("purpose_", list(PURPOSES.values()), ids=list(PURPOSES))
def test_shared_decisions_are_the_ones_decide_makes(purpose_: Purpose) -> None:
    fields = {
        "email": Category.CONTACT,
        "address": Category.ADDRESS,
        "points": Category.MEMBERSHIP,
        "income": Category.ENRICHED_DEMOGRAPHICS,
        "segment": Category.ENRICHED_LIFESTYLE,
    }
    decisions = Decisions(purpose_, fields, NOW)

    for state in _states() * 2:  # the second pass answers from what the first computed
        assert decisions.of(state) == decide(purpose_, fields, state, NOW)


def test_members_released_under_consent_each_name_their_own_grant() -> None:
    decisions = Decisions(OFFERS, {"segment": Category.ENRICHED_LIFESTYLE}, NOW)
    first, second = (
        consents("offers", replace(granted(), grant_id=uuid.UUID(int=n))) for n in (1, 2)
    )

    assert decisions.of(first).consent_ids == (uuid.UUID(int=1),)
    assert decisions.of(second).consent_ids == (uuid.UUID(int=2),)


def test_the_decision_loads_nothing_that_connects() -> None:
    """Importing the decision, in a fresh interpreter, loads no driver, no ORM, no JWT library
    and no module of the store: it decides over state its callers loaded."""
    probe = (
        "import sys, json, gateway.access.policy; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sqlalchemy', 'asyncpg', 'jwt', 'starlette', 'strawberry'} "
        "or m.startswith('gateway.store') or m.startswith('gateway.audit'))))"
    )
    done = subprocess.run(  # noqa: S603  # our own interpreter, our own probe
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )

    assert json.loads(done.stdout) == []
