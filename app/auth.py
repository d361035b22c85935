"""Bearer tokens and how requests reach the routes: strict JSON bodies, and the token checked first.

``StrictJSONRoute`` (every route) refuses a JSON body with a duplicate key (422 naming it) instead of
letting the last value win. ``TokenRoute`` (the routes that change state) checks ``API_TOKEN`` before the
body is read or parsed, so a caller without the token learns nothing about what the route accepts: every
request without the exact token gets 401, whatever its body. ``require_token`` stays on those routes as a
dependency too, which puts the bearer scheme in the OpenAPI document (Swagger's Authorize button).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.middleware import is_json
from app.settings import ServiceSettings

_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the service sets one")
_KEY_SHOWN = 64  # characters of a duplicate key named in the 422


def check_bearer(request: Request, secret: SecretStr, setting: str) -> None:
    """Pass when ``secret`` is empty or the one Authorization header is ``Bearer <secret>``.

    Raises:
        HTTPException: 401 with ``WWW-Authenticate``: no or another scheme, a wrong token (compared in
            constant time), or more than one Authorization header (ambiguous: refused, not first-wins).
    """
    expected = secret.get_secret_value()
    if not expected:
        return
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise HTTPException(
            401,
            f"{len(values)} Authorization headers: send exactly one, 'Authorization: Bearer <{setting}>'",
            {"WWW-Authenticate": 'Bearer error="invalid_request"'},
        )
    scheme, _, credentials = values[0].partition(" ") if values else ("", "", "")
    if scheme.lower() != "bearer" or not credentials:
        raise HTTPException(
            401,
            f"missing bearer token: send 'Authorization: Bearer <{setting}>'",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.encode(), expected.encode()):
        raise HTTPException(401, "invalid bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Pass when API_TOKEN is unset or the bearer token equals it (compared in constant time)."""
    settings: ServiceSettings = request.app.state.settings
    check_bearer(request, settings.api_token, "API_TOKEN")


def require_metrics_token(request: Request) -> None:
    """Pass when METRICS_TOKEN is unset or the bearer token equals it."""
    settings: ServiceSettings = request.app.state.settings
    check_bearer(request, settings.metrics_token, "METRICS_TOKEN")


# --- route classes ------------------------------------------------------------------------------

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


class StrictJSONRoute(APIRoute):
    """A route whose JSON body may not repeat a key in any object (422 ``duplicate_key`` naming it)."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def strict_json(request: Request) -> Response:
            try:
                body = await request.body()
            except Exception:  # too large (413 already sent) or the client left: FastAPI answers as usual
                return await handler(request)
            if body and is_json(request.scope["headers"]):
                try:
                    parsed = json.loads(body, object_pairs_hook=_unique_object)
                except _DuplicateKeyError as exc:
                    key = exc.key[:_KEY_SHOWN] + ("..." if len(exc.key) > _KEY_SHOWN else "")
                    msg = f"duplicate key {key!r} in a JSON object: send each key once"
                    raise RequestValidationError(
                        [{"loc": ("body",), "msg": msg, "type": "duplicate_key"}]
                    ) from None
                except (ValueError, RecursionError):
                    pass  # not JSON: FastAPI's own parse answers the 422
                else:  # Starlette's cache of request.json(): FastAPI does not parse the body again
                    request._json = parsed
            return await handler(request)

        return strict_json


class TokenRoute(StrictJSONRoute):
    """A state-changing route: API_TOKEN is checked before the body is read, then the body as above."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def token_first(request: Request) -> Response:
            settings: ServiceSettings = request.app.state.settings
            check_bearer(request, settings.api_token, "API_TOKEN")
            return await handler(request)

        return token_first
