"""Errors an endpoint raises on purpose; each becomes one status and the SPEC §7 error envelope."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar


class ApiError(Exception):
    """Base: a status, a message safe to show, and optional per-field messages."""

    status = 500
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


class ValidationFailed(ApiError):
    """A query, path or body value is unusable (422)."""

    status = 422


class Unauthorized(ApiError):
    """Missing or wrong bearer token (401)."""

    status = 401
    headers: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"WWW-Authenticate": 'Bearer realm="streamproc"'}
    )


class Forbidden(ApiError):
    """Writes are not enabled, or the request is refused as sent (403)."""

    status = 403


class NotFound(ApiError):
    """No such resource (404)."""

    status = 404


class Conflict(ApiError):
    """The resource is not in a state that allows the action (409)."""

    status = 409


class PayloadTooLarge(ApiError):
    """The request body is over the limit (413)."""

    status = 413


class Unavailable(ApiError):
    """Redis is unreachable or too slow (503)."""

    status = 503


def field_error(field: str, message: str) -> ValidationFailed:
    """A 422 for one field."""
    return ValidationFailed("The given data was invalid.", {field: [message]})
