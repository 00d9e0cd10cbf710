"""Domain errors carry their HTTP status; one handler renders them for the API and the pages."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status_code: int = 400
    code: str = "bad_request"

    def __init_subclass__(cls, *, status_code: int | None = None, code: str | None = None, **kwargs: Any) -> None:
        # Each kind names its HTTP status and machine-readable code in its class line; unnamed ones are inherited.
        super().__init_subclass__(**kwargs)
        if status_code is not None:
            cls.status_code = status_code
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class NotAuthenticated(DomainError, status_code=401, code="not_authenticated"):
    """No valid session cookie or API token."""


class Forbidden(DomainError, status_code=403, code="forbidden"):
    """Signed in, but the role does not allow it."""


class NotFound(DomainError, status_code=404, code="not_found"):
    """No such row, or not in the scope asked for."""


class Conflict(DomainError, status_code=409, code="conflict"):
    """The state changed underneath (a stale version, a name taken)."""


class Invalid(DomainError, status_code=422, code="invalid"):
    """Input that parses but breaks a rule."""


class TooLarge(DomainError, status_code=413, code="too_large"):
    """A file or request over its size limit."""


class InsufficientStorage(DomainError, status_code=507, code="insufficient_storage"):
    """The disk or store has no room left for it."""


class RateLimited(DomainError, status_code=429, code="rate_limited"):
    """Too many attempts; try again later."""


def check_between(value: int, low: int, high: int, message: str) -> None:
    """Invalid (422) with ``message`` unless ``low <= value <= high``: the range check every count and seed gets."""
    if not low <= value <= high:
        raise Invalid(message)
