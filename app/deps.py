"""Every FastAPI dependency of the routes: the settings, the served-model holder, the prediction record, and
the bearer tokens.

The settings come from ``app.settings.get_settings`` (read once per process) or, for an app built with its
own settings (``create_app(settings)``, as the tests do), from its override in ``app.dependency_overrides``.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.records.service import PredictionRecords
from app.serving import ModelHolder
from app.settings import ServiceSettings, get_settings

_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the service sets one")


def settings_for(request: Request) -> ServiceSettings:
    """What ``get_settings`` gives the routes of the app answering ``request``, its override included: for
    code that runs before FastAPI resolves dependencies (``app.auth.TokenRoute``)."""
    provider = request.app.dependency_overrides.get(get_settings, get_settings)
    settings: ServiceSettings = provider()
    return settings


def get_holder(request: Request) -> ModelHolder:
    """The served-model holder of the app answering ``request`` (made by ``create_app``)."""
    holder: ModelHolder = request.app.state.holder
    return holder


def get_records(request: Request) -> PredictionRecords:
    """The prediction record of the app answering ``request`` (made by ``create_app``)."""
    records: PredictionRecords = request.app.state.records
    return records


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
RecordsDep = Annotated[PredictionRecords, Depends(get_records)]


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
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Pass when API_TOKEN is unset or the bearer token equals it (compared in constant time).

    ``credentials`` is unused: the bearer scheme it declares puts Swagger's Authorize button on the routes.
    """
    check_bearer(request, settings.api_token, "API_TOKEN")


def require_metrics_token(request: Request, settings: SettingsDep) -> None:
    """Pass when METRICS_TOKEN is unset or the bearer token equals it."""
    check_bearer(request, settings.metrics_token, "METRICS_TOKEN")
