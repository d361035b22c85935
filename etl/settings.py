"""One settings object for the pipeline and the service, read from the environment and ``.env``."""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

# The Wisconsin CSV ships inside the package (etl/data/README.md): the default source, no network needed.
BUNDLED_DATA_PATH = Path(__file__).resolve().parent / "data" / "BreastCancer.csv"
# The same file online; the README's first example of another source.
PUBLIC_DATA_URL = "https://raw.githubusercontent.com/selva86/datasets/master/BreastCancer.csv"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
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

    # model signing (etl/signing.py)
    model_signing_key: SecretStr | None = Field(
        None, description="HMAC key for model.json (32+ bytes); empty = MODEL_SIGNING_KEY_FILE"
    )
    model_signing_key_file: Path = Field(
        Path("secrets/model_signing.key"), description="key file, made on first use when missing"
    )

    # service
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

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> Settings:
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

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

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


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once (tests build their own ``Settings(...)``).

    Raises:
        SettingsError: a variable breaks its rule (the message names it, without its value).
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError.from_validation(exc) from None
    except SourceError as exc:  # a value that cannot be decoded at all; its message names the field only
        raise SettingsError(f"invalid settings (environment or .env): {exc}") from None


def settings_or_exit() -> Settings:
    """``get_settings()`` for an entry point (the CLI, ``python -m app``, the uvicorn app): on a bad setting,
    print which variables break which rule and exit with status 2, without a traceback."""
    try:
        return get_settings()
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
