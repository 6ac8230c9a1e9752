"""Settings: read from the environment, refused when unsafe outside dev mode, secrets hidden."""

from __future__ import annotations

import base64

import pytest

from gateway.errors import SettingsError
from gateway.settings import DEV_MEMBER_TOKEN_SECRET, load_settings
from gateway.signing import DEV_AUDIT_SEED, Signer

GOOD_SECRET = "q8Vd2yZlK0tS4xw9mN1rB7cE3hJ6pU5aF0gT2iL8oW4"
_, AUDIT_KEY = Signer.generate()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TILLIT_DEV",
        "TILLIT_MEMBER_TOKEN_SECRET",
        "DATABASE_URL",
        "TILLIT_PORT",
        "TILLIT_AUDIT_SIGNING_KEY",
        "TILLIT_AUDIT_VERIFY_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TILLIT_AUDIT_SIGNING_KEY", AUDIT_KEY)


def test_missing_secret_outside_dev_mode_refuses_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="TILLIT_MEMBER_TOKEN_SECRET is not set"):
        load_settings()


@pytest.mark.parametrize(
    "secret",
    [
        "short",
        "change-me-change-me-change-me-change-me",
        "x" * 20,
        DEV_MEMBER_TOKEN_SECRET,
        "my-placeholder-value-that-is-long-enough-for-the-check",
    ],
)
def test_placeholder_or_short_secret_outside_dev_mode_refuses(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", secret)

    with pytest.raises(SettingsError, match="TILLIT_MEMBER_TOKEN_SECRET holds a placeholder"):
        load_settings()


def test_dev_mode_starts_without_a_secret_and_uses_the_dev_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TILLIT_DEV", "true")

    settings = load_settings()

    assert settings.dev
    assert settings.signing_secret == DEV_MEMBER_TOKEN_SECRET
    assert settings.graphiql
    assert settings.effective_log_format == "console"


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal/tillit")
    monkeypatch.setenv("TILLIT_PORT", "9000")

    settings = load_settings()

    assert settings.port == 9000
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://app:pw@db.internal/tillit"
    assert settings.signing_secret == GOOD_SECRET
    assert not settings.graphiql
    assert settings.effective_log_format == "json"


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@db.internal/tillit")

    settings = load_settings()

    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert GOOD_SECRET not in shown
        assert "hunter2" not in shown


def test_invalid_value_is_reported_by_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv("TILLIT_PORT", "not-a-port")

    with pytest.raises(SettingsError, match="TILLIT_PORT"):
        load_settings()


def test_missing_audit_key_outside_dev_mode_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.delenv("TILLIT_AUDIT_SIGNING_KEY")

    with pytest.raises(SettingsError, match="TILLIT_AUDIT_SIGNING_KEY is not set"):
        load_settings()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not base64!", "not base64"),
        ("c2hvcnQ=", "32 bytes"),
        (base64.b64encode(DEV_AUDIT_SEED).decode(), "development key"),
    ],
)
def test_bad_or_development_audit_key_outside_dev_mode_refuses(
    monkeypatch: pytest.MonkeyPatch, key: str, message: str
) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv("TILLIT_AUDIT_SIGNING_KEY", key)

    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_audit_key_never_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)

    settings = load_settings()

    assert AUDIT_KEY not in repr(settings)
    assert settings.audit_verifier.key_id == settings.audit_signer.key_id


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TILLIT_AUDIT_ORIGIN", "has space/x", "TILLIT_AUDIT_ORIGIN names the log"),
        ("TILLIT_AUDIT_ORIGIN", "a+b", "TILLIT_AUDIT_ORIGIN names the log"),
        ("TILLIT_AUDIT_WITNESSES", "not-a-vkey", "TILLIT_AUDIT_WITNESSES: not a verifier key"),
        ("TILLIT_AUDIT_VERIFY_KEY", "c2hvcnQ=", "32 bytes"),
    ],
)
def test_bad_transparency_settings_are_refused_with_their_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_a_log_key_is_not_a_witness_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.notes import NoteKey

    log_key = NoteKey.of_log("tillit.local/audit", Signer.generate()[0].verifier).vkey
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv("TILLIT_AUDIT_WITNESSES", log_key)

    with pytest.raises(SettingsError, match="not a cosignature key"):
        load_settings()


def test_several_verify_keys_are_trusted_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    new, old = Signer.generate()[0], Signer.generate()[0]
    monkeypatch.setenv("TILLIT_MEMBER_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv(
        "TILLIT_AUDIT_VERIFY_KEY", f"{new.verifier.public_base64}, {old.verifier.public_base64}"
    )

    settings = load_settings()

    assert [v.key_id for v in settings.audit_verifiers] == [new.key_id, old.key_id]
