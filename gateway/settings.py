"""The gateway's settings: one typed object, read once from the environment.

Every variable carries the prefix `TILLIT_`, except `DATABASE_URL`, which follows the common
convention. Secrets are `SecretStr`, so they print as `**********`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import SettingsError
from gateway.notes import COSIGNATURE_V1, NoteError, NoteKey, valid_name
from gateway.signing import DEFAULT_LOG_ORIGIN, DEV_AUDIT_SEED, InvalidKey, Signer, Verifier

# The development signing key. It is public (it is in this file), so it is refused outside dev mode.
DEV_MEMBER_TOKEN_SECRET = "dev-only-insecure-member-token-secret-change-me"  # noqa: S105
MIN_SECRET_LENGTH = 32
_PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "placeholder", "dev-only", "secret")

LogLevel = Literal["debug", "info", "warning", "error"]


def default_data_dir() -> Path:
    # As root, the embedded PostgreSQL runs as a system user that must be able to traverse every
    # parent folder; /var/lib is already traversable, while /root would have to be opened up.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/tillit")
    return Path(platformdirs.user_data_dir("tillit", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TILLIT_", extra="ignore", frozen=True)

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "TILLIT_DATABASE_URL"),
        description="PostgreSQL URL; unset means the embedded PostgreSQL in the data directory.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the embedded PostgreSQL keeps its files.",
    )
    host: str = Field(default="127.0.0.1", description="Address the server binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the server binds to.")
    workers: int = Field(default=1, ge=1, le=64, description="Server worker processes.")
    log_level: LogLevel = Field(default="info", description="Lowest level that is logged.")
    log_format: Literal["json", "console"] | None = Field(
        default=None,
        description="`json` for machines, `console` for people; default: console in dev mode.",
    )
    dev: bool = Field(
        default=False,
        description="Development mode: GraphiQL, readable logs, the development signing key.",
    )
    member_token_secret: SecretStr | None = Field(
        default=None,
        description="HS256 key that signs and verifies member tokens (at least 32 characters).",
    )
    member_token_public_key_file: Path | None = Field(
        default=None,
        description="PEM public key (RSA or EC) of an external identity provider: RS256/ES256 "
        "member tokens signed with it are accepted.",
    )
    member_token_jwks_file: Path | None = Field(
        default=None,
        description="JWKS file of an external identity provider (keys chosen by `kid`).",
    )
    member_token_issuer: str = Field(default="tillit", description="Required `iss` claim.")
    member_token_audience: str = Field(default="tillit-member", description="Required `aud` claim.")
    member_token_leeway_seconds: int = Field(
        default=5,
        ge=0,
        le=300,
        description="Seconds a member token is still accepted past its `exp` (clock skew).",
    )
    member_token_ttl_seconds: int = Field(
        default=3600,
        ge=60,
        le=30 * 24 * 3600,
        description="Lifetime of tokens `tillit token` mints.",
    )
    audit_signing_key: SecretStr | None = Field(
        default=None,
        description="Base64 Ed25519 private key (32-byte seed) that signs audit checkpoints "
        "and export manifests; `tillit audit keygen` makes one. Kept outside the database.",
    )
    audit_verify_key: str | None = Field(
        default=None,
        description="Base64 Ed25519 public keys `tillit audit verify` trusts, comma-separated: "
        "after a key rotation the new key and every retired one (default: the signing key's).",
    )
    audit_origin: str = Field(
        default=DEFAULT_LOG_ORIGIN,
        description="The log's name in its signed checkpoints (C2SP tlog-checkpoint origin), a "
        "schema-less URL such as `kundeklubben.no/tillit`; fixed for the life of the log.",
    )
    audit_witnesses: str = Field(
        default="",
        description="Verifier keys (`name+keyid+base64`, comma-separated) of the witnesses "
        "whose cosignatures the log keeps; `tillit audit witness-keygen` makes one.",
    )
    audit_witness_urls: str = Field(
        default="",
        description="Where witnesses take C2SP tlog-witness `add-checkpoint`: `name=URL` pairs, "
        "comma-separated (the name as in TILLIT_AUDIT_WITNESSES, the URL its submission prefix). "
        "The sealer's process sends each new checkpoint to them and keeps their cosignatures.",
    )
    seal_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="How often the sealer writes a checkpoint (0: no sealer in this process).",
    )
    sealer: Literal["always", "standby"] = Field(
        default="always",
        description="`always`: this process seals whenever it holds the database's sealer lock; "
        "`standby`: only when no checkpoint was written for three intervals (the dedicated "
        "sealer process `tillit serve` starts is gone), handing the lock back once caught up.",
    )
    controller_name: str = Field(
        default="Kundeklubben",
        min_length=1,
        max_length=200,
        description="The data controller named on consent receipts.",
    )
    erasure_evidence_days: int = Field(
        default=1095,
        ge=0,
        le=3650,
        description="Days an erased member's consent evidence is kept (to prove past consents, "
        "GDPR Art. 7(1) and 17(3)(e)); then `tillit members purge-erased` deletes it.",
    )
    audience_sync_days: int = Field(
        default=35,
        ge=1,
        le=3650,
        description="How old an export may be and still start a sync (`since=`); "
        "`tillit audience prune` keeps what changed within it and forgets the rest.",
    )
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Connections per worker.")
    db_statement_timeout_ms: int = Field(
        default=5000, ge=100, description="PostgreSQL statement_timeout for request connections."
    )
    db_connect_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How long connecting to one host may take before the next host in "
        "DATABASE_URL is tried.",
    )
    db_tcp_timeout_seconds: float = Field(
        default=10.0,
        ge=2,
        le=600,
        description="TCP keepalives and TCP_USER_TIMEOUT: a connection whose host goes silent "
        "is closed after about this long.",
    )
    request_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Deadline of one request: past it the request ends with 503 "
        "AUDIT_UNAVAILABLE, its connection is discarded and nothing it did is released.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="How long a client has to send a request's line and headers, from opening "
        "the connection or from the previous response; then the connection is closed.",
    )
    # Operation limits: what one request may ask of the gateway. Defaults fit every operation
    # the /me page and the documented app queries send, with room to spare.
    max_body_bytes: int = Field(
        default=256_000, ge=1_000, le=50_000_000, description="Largest request body accepted."
    )
    max_query_depth: int = Field(default=8, ge=2, le=50, description="Deepest selection nesting.")
    max_aliases: int = Field(default=20, ge=0, le=1000, description="Aliases per operation.")
    max_tokens: int = Field(default=2_000, ge=50, le=100_000, description="Lexical tokens.")
    max_root_fields: int = Field(
        default=5, ge=1, le=100, description="Top-level fields per operation."
    )
    max_list_size: int = Field(
        default=100, ge=1, le=10_000, description="Items in any list argument or variable."
    )
    max_variables_depth: int = Field(
        default=16,
        ge=2,
        le=1000,
        description="Deepest nesting of lists and objects in the variables.",
    )
    max_query_cost: int = Field(
        default=25_000,
        ge=10,
        description="Estimated fields resolved: each field costs 1, times the size of every list "
        "above it (the `ids` given, `first`, or 10 for other lists).",
    )
    max_batch: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Operations in one batched request (a JSON array); 0 turns batching off.",
    )
    rate_limit_per_second: float = Field(
        default=500.0,
        ge=0,
        description="Requests per second each client (app key or member) may make, shared by "
        "every worker through PostgreSQL; 0 turns rate limiting off.",
    )
    rate_limit_burst: int = Field(
        default=1000, ge=1, description="Requests a client may make at once above its rate."
    )
    rate_limit_sync_seconds: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="How often each worker adds its clients' requests to the shared counts.",
    )
    public_rate_limit_per_second: float = Field(
        default=50.0,
        ge=0,
        description="Requests per second each client address may make to the public routes "
        "(the audit log's keys, checkpoints, tiles and proofs), shared by every worker; 0 turns "
        "it off.",
    )
    public_rate_limit_burst: int = Field(
        default=200,
        ge=1,
        description="Requests an address may make at once to the public routes above its rate.",
    )
    fast_path: bool = Field(
        default=True,
        description="Run `member`/`members` operations and the consent changes with leaf fields "
        "only through the direct executors (gateway/web/fastpath.py, fastwrite.py); false sends "
        "every operation through graphql-core.",
    )
    cors_origins: str = Field(
        default="",
        description="Origins (comma-separated, e.g. `https://shop.example.org`) whose web pages "
        "may call the API from the browser; empty: none.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for GET /metrics (Prometheus); unset: /metrics answers 404.",
    )

    @model_validator(mode="after")
    def _refuse_unsafe_secrets(self) -> Settings:
        if self.dev:
            return self
        for name, path in (
            ("TILLIT_MEMBER_TOKEN_PUBLIC_KEY_FILE", self.member_token_public_key_file),
            ("TILLIT_MEMBER_TOKEN_JWKS_FILE", self.member_token_jwks_file),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{name} names no readable file")
        external = self.member_token_public_key_file or self.member_token_jwks_file
        secret = self.member_token_secret.get_secret_value() if self.member_token_secret else ""
        if not secret and not external:
            raise ValueError(
                "TILLIT_MEMBER_TOKEN_SECRET is not set; it is required outside dev mode "
                "(set TILLIT_DEV=true for development)."
            )
        if secret and (
            len(secret) < MIN_SECRET_LENGTH
            or any(m in secret.lower() for m in _PLACEHOLDER_MARKERS)
        ):
            raise ValueError(
                "TILLIT_MEMBER_TOKEN_SECRET holds a placeholder or is shorter than "
                f"{MIN_SECRET_LENGTH} characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`."
            )
        audit_key = self.audit_signing_key.get_secret_value() if self.audit_signing_key else ""
        if not audit_key:
            raise ValueError(
                "TILLIT_AUDIT_SIGNING_KEY is not set; it is required outside dev mode "
                "(make one with `tillit audit keygen`)."
            )
        try:
            signer = Signer.from_base64(audit_key)
        except InvalidKey as exc:
            raise ValueError(str(exc)) from None
        if signer.key_id == Signer.from_seed(DEV_AUDIT_SEED).key_id:
            raise ValueError("TILLIT_AUDIT_SIGNING_KEY is the public development key.")
        return self

    @field_validator("audit_verify_key")
    @classmethod
    def _verify_keys(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                [Verifier.from_base64(key) for key in value.split(",") if key.strip()]
            except InvalidKey as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("audit_origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        if not valid_name(value):
            raise ValueError(
                "TILLIT_AUDIT_ORIGIN names the log in its checkpoints: a schema-less URL such as "
                "kundeklubben.no/tillit (no spaces, no +, at most 200 characters)."
            )
        return value

    @field_validator("audit_witnesses")
    @classmethod
    def _witnesses(cls, value: str) -> str:
        for vkey in (v for v in value.split(",") if v.strip()):
            try:
                key = NoteKey.parse(vkey)
            except NoteError as exc:
                raise ValueError(f"TILLIT_AUDIT_WITNESSES: {exc}") from None
            if key.kind != COSIGNATURE_V1:
                raise ValueError(
                    f"TILLIT_AUDIT_WITNESSES: {key.name}'s key is not a cosignature key "
                    "(type 0x04; `tillit audit witness-keygen` makes one)"
                )
        return value

    @field_validator("audit_witness_urls")
    @classmethod
    def _witness_urls(cls, value: str) -> str:
        for pair in (p.strip() for p in value.split(",") if p.strip()):
            name, equals, url = pair.partition("=")
            scheme = url.partition("://")[0]
            if not equals or not name.strip() or scheme not in ("http", "https"):
                raise ValueError(
                    f"TILLIT_AUDIT_WITNESS_URLS holds {pair!r}; give name=URL pairs such as "
                    "dpo.example.org/w1=https://witness.example.org"
                )
        return value

    @field_validator("cors_origins")
    @classmethod
    def _plain_origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or not rest or "/" in rest or origin == "*":
                raise ValueError(
                    f"TILLIT_CORS_ORIGINS holds {origin!r}; give origins such as "
                    "https://shop.example.org (scheme and host, no path, no wildcard)."
                )
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def audit_signer(self) -> Signer:
        """The checkpoint key in force: the configured one, or in dev mode the development key."""
        if self.audit_signing_key is not None:
            return Signer.from_base64(self.audit_signing_key.get_secret_value(), self.audit_origin)
        return Signer.from_seed(DEV_AUDIT_SEED, self.audit_origin)

    @property
    def audit_verifiers(self) -> list[Verifier]:
        """The keys `tillit audit verify` trusts: the configured ones, or the signing key's."""
        if self.audit_verify_key is not None:
            keys = [k for k in self.audit_verify_key.split(",") if k.strip()]
            if keys:
                return [Verifier.from_base64(key) for key in keys]
        return [self.audit_signer.verifier]

    @property
    def audit_verifier(self) -> Verifier:
        """The first trusted key (export manifests are checked with it)."""
        return self.audit_verifiers[0]

    @property
    def witness_keys(self) -> list[NoteKey]:
        return [NoteKey.parse(v) for v in self.audit_witnesses.split(",") if v.strip()]

    @property
    def witness_urls(self) -> dict[str, str]:
        """Witness name → its tlog-witness submission prefix."""
        pairs = (p.strip().partition("=") for p in self.audit_witness_urls.split(",") if p.strip())
        return {name.strip(): url.strip() for name, _, url in pairs}

    @property
    def signing_secret(self) -> str:
        """The member-token key in force: the configured one, or in dev mode the dev key."""
        if self.member_token_secret is not None:
            return self.member_token_secret.get_secret_value()
        return DEV_MEMBER_TOKEN_SECRET

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if self.dev else "json"

    @property
    def graphiql(self) -> bool:
        return self.dev


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # overrides are validated by pydantic
    except ValidationError as exc:
        reasons = []
        for error in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(p) for p in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            name = f"TILLIT_{field.upper()}" if field else ""
            reasons.append(f"{name}: {message}" if name else message)
        raise SettingsError("Invalid configuration: " + "; ".join(reasons)) from None
