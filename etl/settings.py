"""One settings object for the pipeline and the service, read from the environment and ``.env``."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The Wisconsin CSV ships inside the package (etl/data/README.md): the default source, no network needed.
BUNDLED_DATA_PATH = Path(__file__).resolve().parent / "data" / "BreastCancer.csv"
# The same file online; the README's first example of another source.
PUBLIC_DATA_URL = "https://raw.githubusercontent.com/selva86/datasets/master/BreastCancer.csv"
# what a production token must have (token_weakness); `secrets.token_urlsafe(32)` and `openssl rand -hex 32`
# always pass (0 of 10,000 of each rejected: tests/hardening/test_listen_policy.py)
TOKEN_MIN_CHARS = 32
TOKEN_MIN_BITS = 128
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


class Settings(BaseSettings):
    """Every knob of the project. Each field maps to the upper-case environment variable of its name."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # no secret in errors
    )

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses placeholder secrets"
    )
    log_level: str = Field("INFO", description="logging level name")

    # data and pipeline
    data_url: str = Field(
        str(BUNDLED_DATA_PATH), description="http(s) URL or local path of the CSV; default the bundled copy"
    )
    data_dir: Path = Field(Path("data"), description="downloaded data goes to DATA_DIR/raw/")
    results_dir: Path = Field(Path("results"), description="model registry and served artifacts")
    upload_dir: Path = Field(Path("upload"), description="local backups, one timestamped folder each")
    test_size: float = Field(0.2, gt=0.0, lt=0.5, description="held-out share of patients")
    random_seed: int = Field(42, description="seed for the split, CV folds and the model")
    target_recall: float = Field(0.98, gt=0.0, le=1.0, description="recall the decision threshold aims at")
    http_connect_timeout: float = Field(5.0, gt=0, description="seconds to connect to DATA_URL")
    http_read_timeout: float = Field(30.0, gt=0, description="seconds between bytes from DATA_URL")
    download_retries: int = Field(3, ge=0, le=10, description="retries on transient download errors")
    max_data_bytes: int = Field(50 * 1024 * 1024, gt=0, description="size cap of the downloaded CSV")

    # quality gate
    gate_min_recall: float = Field(0.95, ge=0.0, le=1.0)
    gate_min_precision: float = Field(0.90, ge=0.0, le=1.0)
    gate_min_roc_auc: float = Field(0.98, ge=0.0, le=1.0)
    gate_tolerance: float = Field(0.01, ge=0.0, le=1.0, description="allowed drop vs the served model")

    # service
    api_token: str = Field("", description="bearer token for mutating routes; empty disables auth")
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
    metrics_token: str = Field("", description="bearer token required on GET /metrics; empty = open")
    model_poll_seconds: float = Field(
        1.0, ge=0.0, description="how often a worker checks whether another one promoted a new model"
    )

    # Google Drive upload (README "Google Drive"; etl/drive.py)
    gdrive_folder_id: str = Field(
        "", description="id of the Drive folder receiving uploads (from its URL); empty = local backup only"
    )
    google_application_credentials: Path = Field(
        Path("secrets/drive_sa.json"), description="service-account JSON key, or an authorized_user file"
    )
    gdrive_impersonate: str = Field(
        "", description="Workspace user the service account acts as (domain-wide delegation); empty = none"
    )
    gdrive_scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https://www.googleapis.com/auth/drive"],
        description="OAuth scopes, comma-separated (drive.file cannot write into a folder it did not create)",
    )
    gdrive_api_endpoint: str = Field(
        "", description="Drive API base URL, e.g. https://127.0.0.1:8443/drive/v3/ (tests); empty = Google"
    )
    gdrive_token_uri: str = Field(
        "", description="OAuth2 token endpoint override (tests); empty = the credentials file's / Google's"
    )
    gdrive_ca_bundle: str = Field(
        "", description="PEM file of CAs trusted for Drive and token TLS (tests); empty = the default bundle"
    )
    drive_retries: int = Field(5, ge=0, le=20, description="retries per Drive step on transient errors")
    drive_retry_max_seconds: float = Field(
        120.0, gt=0, description="time budget of all Drive retries of one upload, seconds"
    )
    drive_retry_base_seconds: float = Field(
        1.0, ge=0, description="first Drive backoff delay; doubles each retry, with jitter"
    )
    drive_timeout: float = Field(60.0, gt=0, description="socket timeout of each Drive HTTP request, seconds")
    drive_chunk_bytes: int = Field(
        8 * 1024 * 1024, gt=0, multiple_of=256 * 1024, description="resumable upload chunk, n x 256 KiB"
    )

    @field_validator("data_url", mode="before")
    @classmethod
    def _default_source(cls, value: object) -> object:
        # DATA_URL= (empty, as in .env.example and compose) means the bundled copy
        return str(BUNDLED_DATA_PATH) if isinstance(value, str) and not value.strip() else value

    @field_validator("gdrive_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [s for s in value.replace(",", " ").split() if s]
        return value

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        if not self.api_token:
            raise ValueError(
                f"API_TOKEN must be set when ENVIRONMENT=production; make one with {HOW_TO_MAKE_ONE}"
            )
        for name, token in (("API_TOKEN", self.api_token), ("METRICS_TOKEN", self.metrics_token)):
            weakness = token_weakness(token) if token else None
            if weakness:
                msg = f"{name} is too weak for ENVIRONMENT=production: {weakness}"
                raise ValueError(f"{msg}; make one with {HOW_TO_MAKE_ONE}")
        return self

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once (tests build their own ``Settings(...)``)."""
    return Settings()
