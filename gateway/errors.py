"""Domain errors. Each carries a stable code that reaches the caller as `extensions.code`.

    TillitError                 an expected outcome the caller is told about
    ├── Unauthenticated         no, unknown, malformed or expired credentials
    ├── Forbidden               authenticated, but not allowed to do this at all
    ├── UnknownPurpose          the declared purpose is not in the policy
    ├── PurposeNotPermitted     the caller may not act under the declared purpose
    ├── NotFound                the member (or other object) does not exist
    ├── BadUserInput            arguments that cannot be acted on
    ├── Refused                 refused by the decision or the policy (code varies)
    │   └── FieldWithheld       one field not released by the access decision
    ├── RateLimited             the caller sent more requests than its rate allows
    └── AuditUnavailable        the access event could not be recorded, so nothing is released
        └── DatabaseUnavailable the database cannot answer now (gateway.store.db translates)

    PolicyFileError             the purpose policy file is invalid (line and reason)
    SettingsError               the environment does not configure a startable gateway

Messages are written for the caller: they never hold personal data, SQL or internals.
"""

from __future__ import annotations

from typing import Any

from gateway.domain import ErrorCode


class TillitError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL_SERVER_ERROR
    default_message = "The request could not be completed."

    def __init__(self, message: str | None = None, **extensions: Any) -> None:
        self.message = message or self.default_message
        self.extensions = extensions
        super().__init__(self.message)

    def as_extensions(self) -> dict[str, Any]:
        return {"code": self.code.value, **self.extensions}


class Unauthenticated(TillitError):
    code = ErrorCode.UNAUTHENTICATED
    # One message for every failure, so that a caller learns nothing about which keys exist.
    default_message = "Authentication required: send a valid API key or member token."


class Forbidden(TillitError):
    code = ErrorCode.FORBIDDEN
    default_message = "You are not allowed to perform this operation."


class UnknownPurpose(TillitError):
    code = ErrorCode.UNKNOWN_PURPOSE
    default_message = "The declared purpose is not a registered purpose."


class PurposeNotPermitted(TillitError):
    code = ErrorCode.PURPOSE_NOT_PERMITTED
    default_message = "This client may not act under the declared purpose."


class NotFound(TillitError):
    code = ErrorCode.NOT_FOUND
    default_message = "Not found."


class BadUserInput(TillitError):
    code = ErrorCode.BAD_USER_INPUT
    default_message = "The arguments are not valid."


class RateLimited(TillitError):
    code = ErrorCode.RATE_LIMITED
    default_message = "Too many requests: slow down and retry after the time in Retry-After."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after


class Refused(TillitError):
    """The access decision or the policy refuses the operation; the code says why."""

    def __init__(self, code: ErrorCode, message: str, **extensions: Any) -> None:
        super().__init__(message, **extensions)
        self.code = code


class FieldWithheld(Refused):
    """One member field the access decision did not release; the code says why."""


class AuditUnavailable(TillitError):
    code = ErrorCode.AUDIT_UNAVAILABLE
    default_message = "The access could not be recorded, so no data was released. Try again."


class DatabaseUnavailable(AuditUnavailable):
    """The database cannot be reached or answer now: what gateway.store.db makes of driver and
    socket errors, so that nothing above it names them."""


class PolicyFileError(Exception):
    """The purpose policy file cannot be loaded; says where and why."""

    def __init__(self, path: str, reason: str, line: int | None = None) -> None:
        self.path = path
        self.reason = reason
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


class SettingsError(Exception):
    """The environment does not describe a gateway that may start."""
