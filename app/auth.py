"""Bearer-token check for the routes that change state (train, evaluate, upload, promote)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from etl.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the service sets one")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Pass when API_TOKEN is unset or the bearer token equals it (compared in constant time)."""
    settings: Settings = request.app.state.settings
    expected = settings.api_token.get_secret_value()
    if not expected:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "missing bearer token: send 'Authorization: Bearer <API_TOKEN>'",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(401, "invalid bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
