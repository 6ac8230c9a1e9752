"""The purpose policy file: validation with line and reason, and idempotent loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.access.purposes import (
    DEFAULT_POLICY_FILE,
    fetch_purposes,
    load_purposes,
    read_policy_file,
)
from gateway.domain import Category, ConsentMethod, LegalBasis
from gateway.errors import PolicyFileError
from gateway.store.db import raw_of

VALID = """\
version = 1

[purposes.membership_service]
legal_basis = "CONTRACT"
categories = ["contact", "membership"]
notice_version = "1"
title.nb = "Medlemskap"
title.en = "Membership"
description.nb = "Beskrivelse"
description.en = "Description"

[purposes.offers]
legal_basis = "CONSENT"
categories = ["enriched.lifestyle"]
notice_version = "2"
accepted_notice_versions = ["1", "2"]
consent_method = "EXPLICIT"
consent_lifetime_days = 30
title.nb = "Tilbud"
title.en = "Offers"
description.nb = "Beskrivelse"
description.en = "Description"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "purposes.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_policy_defines_the_four_required_purposes() -> None:
    purposes = {p.key: p for p in read_policy_file(DEFAULT_POLICY_FILE)}

    assert purposes["membership_service"].legal_basis is LegalBasis.CONTRACT
    assert purposes["membership_service"].categories == {
        Category.CONTACT,
        Category.MEMBERSHIP,
        Category.ADDRESS,
    }
    offers = purposes["personalized_offers"]
    assert offers.legal_basis is LegalBasis.CONSENT
    assert offers.required_consent_method is ConsentMethod.EXPLICIT
    assert offers.categories == {
        Category.MEMBERSHIP,
        Category.ENRICHED_LIFESTYLE,
        Category.ENRICHED_DEMOGRAPHICS,
    }
    insight = purposes["customer_insight"]
    assert insight.required_consent_method is ConsentMethod.CONDITIONAL
    assert insight.categories == {Category.ENRICHED_DEMOGRAPHICS}
    quality = purposes["data_quality"]
    assert quality.legal_basis is LegalBasis.LEGITIMATE_INTEREST
    assert quality.categories == {Category.ADDRESS, Category.STATUS}
    for purpose in purposes.values():
        assert all((purpose.title.nb, purpose.title.en))
        assert all((purpose.description.nb, purpose.description.en))
        assert purpose.notice_version in purpose.accepted_notice_versions
        assert (purpose.consent_lifetime is not None) == (purpose.legal_basis is LegalBasis.CONSENT)


def test_valid_file_is_parsed(tmp_path: Path) -> None:
    purposes = {p.key: p for p in read_policy_file(write(tmp_path, VALID))}

    assert purposes["offers"].accepted_notice_versions == {"1", "2"}
    assert purposes["offers"].consent_lifetime is not None
    assert purposes["offers"].consent_lifetime.days == 30
    assert purposes["membership_service"].accepted_notice_versions == {"1"}


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        (('legal_basis = "CONTRACT"', 'legal_basis = "VIBES"'), 4, "legal_basis"),
        (
            ('categories = ["contact", "membership"]', 'categories = ["contact", "shoe_size"]'),
            5,
            "categories",
        ),
        (('consent_method = "EXPLICIT"\n', ""), 12, "needs consent_method"),
        (
            ('categories = ["enriched.lifestyle"]', 'categories = ["enriched.lifestyle"]\nfoo = 1'),
            15,
            "foo",
        ),
        (('title.en = "Membership"\n', ""), 7, "title.en"),
        (
            ('accepted_notice_versions = ["1", "2"]', 'accepted_notice_versions = ["1"]'),
            12,
            "must include notice_version",
        ),
        (("[purposes.offers]", '[purposes."Offers-2"]'), 12, "lower_snake_case"),
        (
            ('notice_version = "1"', 'notice_version = "1"\nconsent_method = "EXPLICIT"'),
            3,
            "only apply to CONSENT purposes",
        ),
    ],
    ids=[
        "unknown-basis",
        "unknown-category",
        "consent-without-method",
        "unknown-key",
        "missing-title",
        "notice-not-accepted",
        "bad-purpose-key",
        "consent-field-on-contract",
    ],
)
def test_invalid_file_is_refused_with_line_and_reason(
    tmp_path: Path, change: tuple[str, str], line: int, reason: str
) -> None:
    old, new = change
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))

    with pytest.raises(PolicyFileError) as caught:
        read_policy_file(path)

    assert reason in caught.value.reason
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_enriched_category_needs_a_consent_purpose(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('["contact", "membership"]', '["enriched.lifestyle"]'))

    with pytest.raises(PolicyFileError, match="need a CONSENT purpose") as caught:
        read_policy_file(path)
    assert caught.value.line == 3


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('notice_version = "2"', "notice_version = 2 2"))

    with pytest.raises(PolicyFileError, match="invalid TOML") as caught:
        read_policy_file(path)
    assert caught.value.line == 15


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="file not found"):
        read_policy_file(tmp_path / "nope.toml")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "purposes.toml"
    path.write_bytes(b"version = 1\n# \xff\xfe\n")
    with pytest.raises(PolicyFileError, match="not UTF-8"):
        read_policy_file(path)


async def test_loading_is_idempotent(conn: AsyncConnection, tmp_path: Path) -> None:
    purposes = read_policy_file(write(tmp_path, VALID))

    first = await load_purposes(conn, purposes)
    second = await load_purposes(conn, purposes)

    # The fixture loaded the repository's policy: membership_service exists, the rest is retired.
    assert first.created == ["offers"]
    assert first.updated == ["membership_service"]
    assert first.retired == [
        "customer_insight",
        "data_quality",
        "email_marketing",
        "personalized_offers",
    ]
    assert second.created == second.updated == second.retired == []
    assert sorted(second.unchanged) == ["membership_service", "offers"]
    loaded = {p.key: p for p in await fetch_purposes(await raw_of(conn))}
    assert loaded == {p.key: p for p in purposes}


async def test_changed_purpose_is_updated_and_removed_one_retired(
    conn: AsyncConnection, tmp_path: Path
) -> None:
    await load_purposes(conn, read_policy_file(write(tmp_path, VALID)))
    changed = VALID.replace('categories = ["contact", "membership"]', 'categories = ["contact"]')
    only_membership = changed[: changed.index("[purposes.offers]")]

    summary = await load_purposes(conn, read_policy_file(write(tmp_path, only_membership)))

    assert summary.updated == ["membership_service"]
    assert summary.retired == ["offers"]
    in_force = {p.key: p for p in await fetch_purposes(await raw_of(conn))}
    assert set(in_force) == {"membership_service"}
    assert in_force["membership_service"].categories == {Category.CONTACT}
    everything = {p.key: p for p in await fetch_purposes(await raw_of(conn), include_retired=True)}
    assert everything["offers"].retired


SIGN_UP = """
sign_up.nb = "Ja, send meg tilbud."
sign_up.en = "Yes, send me offers."
"""


def test_the_sign_up_wording_of_a_consent_purpose_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + SIGN_UP)

    offers = {p.key: p for p in read_policy_file(path)}["offers"]

    assert offers.sign_up_wording is not None
    assert offers.sign_up_wording.en == "Yes, send me offers."
    assert offers.conditional_at_sign_up is False


def test_the_repository_offers_explicit_and_conditional_consents_at_sign_up() -> None:
    purposes = {p.key: p for p in read_policy_file(DEFAULT_POLICY_FILE)}

    assert purposes["personalized_offers"].sign_up_wording is not None
    assert purposes["personalized_offers"].conditional_at_sign_up is False
    assert purposes["customer_insight"].conditional_at_sign_up is True
    assert purposes["membership_service"].sign_up_wording is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # An explicit-only purpose cannot be tied to joining.
        (VALID + SIGN_UP + "sign_up.conditional = true\n", "needs consent_method = CONDITIONAL"),
        # Sign-up wording belongs to consent purposes only.
        (
            VALID.replace(
                'description.en = "Description"\n', 'description.en = "Description"\n' + SIGN_UP, 1
            ),
            "only apply to CONSENT purposes",
        ),
        (VALID + 'sign_up.nb = "Bare norsk"\n', "sign_up.en"),
    ],
    ids=["conditional-for-explicit", "not-a-consent-purpose", "one-language"],
)
def test_invalid_sign_up_wording_is_refused(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(PolicyFileError) as refused:
        read_policy_file(write(tmp_path, text))

    assert reason in str(refused.value)
