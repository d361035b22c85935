"""One settings object for the pipeline and the service, read from the environment and ``.env``."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The Wisconsin CSV ships inside the package (etl/data/README.md): the default source, no network needed.
BUNDLED_DATA_PATH = Path(__file__).resolve().parent / "data" / "BreastCancer.csv"
# The same file online; the README's first example of another source.
PUBLIC_DATA_URL = "https://raw.githubusercontent.com/selva86/datasets/master/BreastCancer.csv"
_PLACEHOLDER_TOKENS = {"changeme", "change-me", "secret", "token", "please-change-me"}


class Settings(BaseSettings):
    """Every knob of the project. Each field maps to the upper-case environment variable of its name."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

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
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "production":
            if not self.api_token:
                raise ValueError("API_TOKEN must be set when ENVIRONMENT=production")
            token = self.api_token.lower()
            if token in _PLACEHOLDER_TOKENS or "change-me" in token or "changeme" in token or len(token) < 16:
                raise ValueError(
                    "API_TOKEN is a placeholder or shorter than 16 characters; set a real secret"
                )
        return self

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once (tests build their own ``Settings(...)``)."""
    return Settings()
