"""The pipeline's settings (data, training, gate, signing key, Drive, logging), read from the environment and
``.env``. The web server's own settings extend these in app/settings.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, TypeVar, overload
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

# The Wisconsin CSV ships inside the package (etl/data/README.md): the default source, no network needed.
BUNDLED_DATA_PATH = Path(__file__).resolve().parent / "data" / "BreastCancer.csv"
# The same file online; the README's first example of another source.
PUBLIC_DATA_URL = "https://raw.githubusercontent.com/selva86/datasets/master/BreastCancer.csv"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    """Every knob of the pipeline. Each field maps to the upper-case environment variable of its name."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # no secret in errors
    )

    log_level: str = Field("INFO", description="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL")

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
    download_deadline_seconds: float = Field(
        120.0, gt=0, description="total time for one download, every attempt and retry included"
    )
    max_data_rows: int = Field(100_000, ge=1, description="most data rows in the CSV, checked while parsing")
    data_url_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts a caller's data_url may name (every redirect hop too), comma-separated; "
        "empty = the host of DATA_URL only",
    )
    data_url_allow_private_networks: bool = Field(
        False, description="let a caller's data_url reach loopback, private and link-local addresses"
    )
    raw_retention: int = Field(
        10,
        ge=0,
        description="newest downloads kept in DATA_DIR/raw (plus those of registered versions); 0 = all",
    )
    backup_retention: int = Field(20, ge=0, description="newest backup folders kept in UPLOAD_DIR; 0 = all")

    # training procedure and nested cross-validation (docs/model.md)
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = Field(
        "auto",
        description="probability calibration; auto keeps the one with the lowest nested Brier score that "
        "misses no more cancers than none",
    )
    nested_repeats: int = Field(3, ge=1, le=20, description="repeats of the nested cross-validation")
    nested_folds: int = Field(5, ge=2, le=20, description="outer folds of the nested cross-validation")

    # quality gate (etl/gate.py; measured error rates in docs/model.md)
    gate_min_recall: float = Field(0.95, ge=0.0, le=1.0, description="floor of the nested recall")
    gate_min_precision: float = Field(0.90, ge=0.0, le=1.0, description="floor of the nested precision")
    gate_min_roc_auc: float = Field(0.98, ge=0.0, le=1.0, description="floor of the nested ROC-AUC")
    gate_min_reference_roc_auc: float = Field(
        0.90, ge=0.0, le=1.0, description="floor of the ROC-AUC on the trusted reference set"
    )
    gate_alpha: float = Field(
        0.01, gt=0.0, lt=0.5, description="level of the paired tests against the served model"
    )

    # registry database and artifact store (etl/registry/, etl/artifacts.py; docs/replicas.md)
    registry_url: str = Field(
        "",
        description="database of the registry (versions, the served pointer, the training lease): "
        "sqlite:///path or postgresql://user:password@host/db; empty = sqlite:///RESULTS_DIR/registry.db",
    )
    training_lease_seconds: float = Field(
        60.0,
        ge=2.0,
        le=3600.0,
        description="a killed trainer's lease frees itself after this long (a running one renews it)",
    )
    artifact_url: str = Field(
        "",
        description="where each version's files are stored: a folder, file:///absolute/path or "
        "s3://bucket/prefix; empty = RESULTS_DIR/models",
    )
    artifact_endpoint_url: str = Field(
        "",
        description="S3-compatible server for an s3:// ARTIFACT_URL (MinIO, Ceph), e.g. http://minio:9000; "
        "empty = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS",
    )

    # model signing (etl/signing.py)
    model_signing_key: SecretStr | None = Field(
        None, description="HMAC key for model.json (32+ bytes); empty = MODEL_SIGNING_KEY_FILE"
    )
    model_signing_key_file: Path = Field(
        Path("secrets/model_signing.key"), description="key file, made on first use when missing"
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

    @field_validator("data_url_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        from etl.source import canonical_host  # etl.source imports this module

        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, list):
            return items
        hosts = []
        for n, item in enumerate(items, start=1):
            try:
                hosts.append(canonical_host(str(item)))
            except ValueError as exc:
                raise ValueError(f"DATA_URL_ALLOWED_HOSTS entry {n} is not a host name: {exc}") from None
        return hosts

    @field_validator("artifact_url")
    @classmethod
    def _artifact_url(cls, value: str) -> str:
        from etl.artifacts import parse_url

        if value.strip():
            parse_url(value)
        return value.strip()

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str) -> str:
        from etl.db import parse_url

        if value.strip():
            parse_url(value.strip())
        return value.strip()

    @field_validator("artifact_endpoint_url")
    @classmethod
    def _artifact_endpoint(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if value.strip() and (
            parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc
        ):
            raise ValueError("must be an http(s)://host[:port] URL without credentials")
        return value.strip()

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return value.upper()

    @field_validator("gdrive_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [s for s in value.replace(",", " ").split() if s]
        return value

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def artifact_location(self) -> str:
        """ARTIFACT_URL, or RESULTS_DIR/models when it is empty."""
        return self.artifact_url or str(self.results_dir / "models")

    @property
    def registry_location(self) -> str:
        """REGISTRY_URL, or an SQLite file beside the results when it is empty."""
        from etl.db import sqlite_url

        return self.registry_url or sqlite_url(self.results_dir / "registry.db")

    def signing_key(self) -> bytes:
        """MODEL_SIGNING_KEY, or the key file (made on first use)."""
        from etl.signing import check_key, load_or_create_key

        if self.model_signing_key is not None and self.model_signing_key.get_secret_value():
            return check_key(self.model_signing_key.get_secret_value().encode(), "MODEL_SIGNING_KEY")
        return load_or_create_key(self.model_signing_key_file)


class SettingsError(ValueError):
    """The environment or ``.env`` holds an invalid setting. The message names each variable and the rule it
    breaks, never the value: pydantic's own error shows the input, and the input can be a secret (or, for a
    rule that spans fields, every value read from ``.env``)."""

    @classmethod
    def from_validation(cls, error: ValidationError) -> SettingsError:
        problems = []
        for item in error.errors(include_url=False, include_context=False):
            message = str(item["msg"]).removeprefix("Value error, ")
            value = item.get("input")
            if isinstance(value, str) and len(value) >= 3 and value in message:
                message = message.replace(value, "<value>")  # no rule of ours quotes it; a library's might
            loc = [str(part) for part in item["loc"]]
            where = loc[0].upper() + "".join(f"[{part}]" for part in loc[1:]) + ": " if loc else ""
            problems.append(where + message)
        return cls(
            "invalid settings (environment or .env; values are not shown):\n"
            + "\n".join(f"  {problem}" for problem in problems)
        )


S = TypeVar("S", bound=Settings)


def load_settings(cls: type[S]) -> S:
    """``cls()`` (``Settings`` or a subclass) read from the environment and ``.env``.

    Raises:
        SettingsError: a variable breaks its rule (the message names it, without its value).
    """
    try:
        return cls()
    except ValidationError as exc:
        raise SettingsError.from_validation(exc) from None
    except SourceError as exc:  # a value that cannot be decoded at all; its message names the field only
        raise SettingsError(f"invalid settings (environment or .env): {exc}") from None


@overload
def settings_or_exit() -> Settings: ...
@overload
def settings_or_exit(cls: type[S]) -> S: ...
def settings_or_exit(cls: type[Settings] = Settings) -> Settings:
    """``load_settings(cls)`` for an entry point (the CLI; the service with its own class): on a bad setting,
    print which variables break which rule and exit with status 2, without a traceback."""
    try:
        return load_settings(cls)
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
