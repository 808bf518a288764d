"""Bearer-key auth: one key for every route but health, optionally another for writes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.api.models import ForbiddenError, UnauthorizedError
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="LABELRANK_API_KEY or LABELRANK_API_WRITE_KEY")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _matches(given: str, key: SecretStr | None) -> bool:
    return key is not None and hmac.compare_digest(given.encode(), key.get_secret_value().encode())


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def require_read(request: Request, credentials: Credentials) -> None:
    """Reads need the API key (the write key works too) when one is set."""
    settings = _settings(request)
    if settings.api_key is None:
        return
    given = credentials.credentials if credentials else ""
    # Both comparisons always run, so timing does not tell which key was close.
    ok = _matches(given, settings.api_key) | _matches(given, settings.api_write_key)
    if not ok:
        raise UnauthorizedError("a valid 'Authorization: Bearer <key>' header is required")


def require_write(request: Request, credentials: Credentials) -> None:
    """Writes need the write key when one is set, else the API key when that is set."""
    settings = _settings(request)
    key = settings.api_write_key or settings.api_key
    if key is None:
        return
    given = credentials.credentials if credentials else ""
    if _matches(given, key):
        return
    if settings.api_write_key is not None and _matches(given, settings.api_key):
        raise ForbiddenError("this key can read but not change labels: use the write key")
    raise UnauthorizedError("a valid 'Authorization: Bearer <key>' header is required")
