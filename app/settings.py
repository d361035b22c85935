"""The web server's settings: the pipeline's (etl/settings.py) plus where and how the service listens, its
tokens and its request limits. ``get_settings`` builds them once per process; routes get them through
``app.deps.SettingsDep``. (Here, not in app/deps.py, so that ``python -m app`` and the HTTP protocol read them
without importing FastAPI and the model code: a refused start stays quick.)"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from etl.settings import Settings, settings_or_exit

# what a production token must have (token_weakness); `secrets.token_urlsafe(32)` and `openssl rand -hex 32`
# always pass (0 of 10,000 of each rejected: tests/hardening/test_listen_policy.py)
TOKEN_MIN_CHARS = 32
TOKEN_MIN_BITS = 128
_PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "placeholder", "example", "your-token")
HOW_TO_MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' or openssl rand -hex 32"


def token_weakness(token: str) -> str | None:
    """Which rule a production bearer token breaks, or None when it looks random.

    The rules: at least ``TOKEN_MIN_CHARS`` characters; at least ``TOKEN_MIN_BITS`` bits by the token's own
    character frequencies (Shannon entropy times length, which underestimates a random token); at least
    three quarters of its 3-character windows distinct (no repeated pattern); at most half of its
    neighbouring characters equal or one code point apart (no runs like ``aaaa`` or ``1234``). The message
    names the rule, never the value.
    """
    n = len(token)
    if any(word in token.lower() for word in _PLACEHOLDER_WORDS):
        return "a placeholder (it contains a word like change-me)"
    if n < TOKEN_MIN_CHARS:
        return f"shorter than {TOKEN_MIN_CHARS} characters"
    bits = -sum(c * math.log2(c / n) for c in Counter(token).values())
    if bits < TOKEN_MIN_BITS:
        return f"under {TOKEN_MIN_BITS} bits of entropy by its character frequencies (too few distinct ones)"
    if len({token[i : i + 3] for i in range(n - 2)}) < 0.75 * (n - 2):
        return "a repeated pattern (fewer than 3/4 of its 3-character windows are distinct)"
    if sum(abs(ord(a) - ord(b)) <= 1 for a, b in itertools.pairwise(token)) > (n - 1) / 2:
        return "runs of equal or consecutive characters (more than half of neighbouring pairs)"
    return None


class ServiceSettings(Settings):
    """The pipeline's settings and the service's. Each field maps to the upper-case environment variable of
    its name; with ENVIRONMENT=production, API_TOKEN must be set and both tokens must look random."""

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses a missing API_TOKEN and weak tokens"
    )
    api_token: SecretStr = Field(
        SecretStr(""), description="bearer token for mutating routes; empty disables auth"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_batch: int = Field(10_000, ge=1, description="most instances in one /predict/batch")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024, description="largest request line + headers; above: 431"
    )
    max_headers: int = Field(100, ge=10, le=1000, description="most request headers; above: 431")
    allow_unauthenticated: bool = Field(
        False, description="serve beyond loopback without API_TOKEN (logged as a warning at start)"
    )
    metrics_token: SecretStr = Field(
        SecretStr(""), description="bearer token required on GET /metrics; empty = open"
    )
    model_poll_seconds: float = Field(
        1.0, ge=0.0, description="how often a worker checks whether another one promoted a new model"
    )

    # the prediction record (docs/monitoring.md, "The prediction record")
    prediction_log: Literal["async", "sync", "off"] = Field(
        "async",
        description="async: records written in the background within PREDICTION_LOG_FLUSH_SECONDS; sync: "
        "committed before the answer (503 without the database); off: not recorded",
    )
    prediction_db_url: SecretStr = Field(
        SecretStr(""),
        description="sqlite:///path or postgresql://user:password@host/db; "
        "empty = DATA_DIR/predictions.sqlite3",
    )
    prediction_log_flush_seconds: float = Field(
        1.0, gt=0.0, le=60.0, description="async: the longest a record waits in memory before it is written"
    )
    prediction_log_queue_rows: int = Field(
        100_000, ge=1, description="async: most rows waiting in memory; past it predictions are not recorded"
    )
    prediction_retention_days: int = Field(
        365, ge=0, description="records older than this are purged (hourly); 0 = kept for ever"
    )
    live_window: int = Field(
        500, ge=1, description="live quality over the newest this many labelled predictions of the version"
    )
    live_min_labelled: int = Field(30, ge=1, description="live quality is reported from this many outcomes")
    drift_window: int = Field(1000, ge=1, description="input drift over the newest this many predictions")
    drift_min_predictions: int = Field(200, ge=1, description="input drift is reported from this many")
    live_cache_seconds: float = Field(
        5.0, ge=0.0, description="live figures are recomputed from the database at most this often"
    )

    @field_validator("prediction_db_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            from etl.db.engine import parse_url  # SQLAlchemy only when a URL is set

            parse_url(value.get_secret_value())  # ValueError naming the rule, never the URL
        return value

    @model_validator(mode="after")
    def _refuse_weak_tokens(self) -> ServiceSettings:
        if self.environment != "production":
            return self
        if not self.api_token.get_secret_value():
            raise ValueError(
                f"API_TOKEN must be set when ENVIRONMENT=production; make one with {HOW_TO_MAKE_ONE}"
            )
        for name, secret in (("API_TOKEN", self.api_token), ("METRICS_TOKEN", self.metrics_token)):
            token = secret.get_secret_value()
            weakness = token_weakness(token) if token else None
            if weakness:
                msg = f"{name} is too weak for ENVIRONMENT=production: {weakness}"
                raise ValueError(f"{msg}; make one with {HOW_TO_MAKE_ONE}")
        return self


@lru_cache
def get_settings() -> ServiceSettings:
    """The service's settings from the environment and ``.env``, read once (a bad one: exit 2, naming it).

    The routes' settings dependency: an app built with its own settings (``create_app(settings)``, as the
    tests do) installs them as the override of this function, and a test may replace that override
    (``app.dependency_overrides[get_settings]``).
    """
    return settings_or_exit(ServiceSettings)
