"""How requests reach the routes: strict JSON bodies, and the token checked first.

``StrictJSONRoute`` (every route) refuses a JSON body with a duplicate key (422 naming it) instead of
letting the last value win. ``TokenRoute`` (the routes that change state, app/routes/pipeline.py) runs
``app.deps.require_token`` before the body is read or parsed, so a caller without the token learns nothing
about what the route accepts: every request without the exact token gets 401, whatever its body.
``require_token`` stays on those routes as a dependency too, which puts the bearer scheme in the OpenAPI
document (Swagger's Authorize button).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.deps import require_token, settings_for
from app.middleware import is_json

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_KEY_SHOWN = 64  # characters of a duplicate key named in the 422


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
            require_token(request, settings_for(request), None)
            return await handler(request)

        return token_first


def token_router(**kwargs: Any) -> APIRouter:
    """A router of token routes: ``TokenRoute``, and ``require_token`` as a dependency for the OpenAPI
    document (app/routes/pipeline.py, app/routes/records.py)."""
    return APIRouter(route_class=TokenRoute, dependencies=[Depends(require_token)], **kwargs)
