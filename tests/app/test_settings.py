"""The service's settings (app/settings.py): the pipeline's plus the web server's, and only the service's
class has the web server's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import ServiceSettings
from etl.settings import Settings

SERVICE_ONLY = {
    "environment",
    "api_token",
    "host",
    "port",
    "workers",
    "max_batch",
    "max_body_bytes",
    "max_header_bytes",
    "max_headers",
    "allow_unauthenticated",
    "metrics_token",
    "model_poll_seconds",
    "prediction_log",
    "prediction_db_url",
    "prediction_log_flush_seconds",
    "prediction_log_queue_rows",
    "prediction_retention_days",
    "live_window",
    "live_min_labelled",
    "drift_window",
    "drift_min_predictions",
    "live_cache_seconds",
}


def test_settings_service_fields_only_in_service_settings() -> None:
    assert set(ServiceSettings.model_fields) - set(Settings.model_fields) == SERVICE_ONLY
    assert set(Settings.model_fields) < set(ServiceSettings.model_fields)


def test_settings_api_token_is_secret_in_repr() -> None:
    settings = ServiceSettings(_env_file=None, api_token="a-real-token-0123456789")  # type: ignore[call-arg]
    assert "a-real-token-0123456789" not in repr(settings) + str(settings.model_dump())
    assert settings.api_token.get_secret_value() == "a-real-token-0123456789"


def test_settings_pipeline_class_ignores_service_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m etl`` reads ``Settings``: a service variable, even an invalid one, is not its concern."""
    monkeypatch.setenv("PORT", "70123")
    monkeypatch.setenv("ENVIRONMENT", "production")  # with no API_TOKEN: refused by the service only
    assert not hasattr(Settings(_env_file=None), "port")  # type: ignore[call-arg]
    with pytest.raises(ValidationError) as refused:
        ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    assert {str(e["loc"][0]) for e in refused.value.errors() if e["loc"]} == {"port"}
