"""The Google Drive upload's settings as one typed object, built from the pipeline's Settings in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from etl.retry import RetryPolicy
from etl.settings import Settings

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
CHUNK_UNIT = 256 * 1024  # resumable chunks must be multiples of 256 KiB (Drive API rule)
DEFAULT_CHUNK_SIZE = 32 * CHUNK_UNIT  # 8 MiB


@dataclass(frozen=True)
class DriveConfig:
    """Where to upload and how.

    Attributes:
        parent_folder_id: GDRIVE_FOLDER_ID, the folder that receives one subfolder per upload.
        credentials_path: service-account key or authorized-user file (GOOGLE_APPLICATION_CREDENTIALS).
        scopes: OAuth scopes (the full ``drive`` scope: ``drive.file`` cannot add to a folder the account
            did not create).
        impersonate: a Workspace user to act as (domain-wide delegation); service-account keys only.
        api_endpoint: Drive base URL override, ``https://host:port/drive/v3/`` (tests); None = Google.
        token_uri: OAuth2 token endpoint override (tests); None = the credentials' own (Google's).
        ca_bundle: PEM of CAs to trust instead of httplib2's bundle (tests); None = default.
        timeout: socket timeout of each request, seconds.
        retry: bounds of the retries of transient failures: per step, and one deadline for the upload.
        chunk_size: resumable chunk size, a multiple of 256 KiB.
    """

    parent_folder_id: str
    credentials_path: Path
    scopes: tuple[str, ...] = (DRIVE_SCOPE,)
    impersonate: str | None = None
    api_endpoint: str | None = None
    token_uri: str | None = None
    ca_bundle: Path | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.chunk_size % CHUNK_UNIT:
            raise ValueError(
                f"chunk_size must be a positive multiple of {CHUNK_UNIT} bytes, got {self.chunk_size}"
            )


def drive_config(settings: Settings) -> DriveConfig | None:
    """The Drive settings of ``settings``, or None when GDRIVE_FOLDER_ID is empty (local backup only)."""
    if not settings.gdrive_folder_id:
        return None
    return DriveConfig(
        parent_folder_id=settings.gdrive_folder_id,
        credentials_path=Path(settings.google_application_credentials),
        scopes=tuple(settings.gdrive_scopes),
        impersonate=settings.gdrive_impersonate or None,
        api_endpoint=settings.gdrive_api_endpoint or None,
        token_uri=settings.gdrive_token_uri or None,
        ca_bundle=Path(settings.gdrive_ca_bundle) if settings.gdrive_ca_bundle else None,
        timeout=settings.drive_timeout,
        retry=RetryPolicy(
            retries=settings.drive_retries,
            base_seconds=settings.drive_retry_base_seconds,
            deadline_seconds=settings.drive_retry_max_seconds,
        ),
        chunk_size=settings.drive_chunk_bytes,
    )
