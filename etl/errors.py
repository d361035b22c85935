"""Typed errors raised by the pipeline; a caller (the CLI, the service's app/errors.py) decides in one place
what each means to its users."""

from __future__ import annotations


class EtlError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class DataSourceError(EtlError):
    """The data source could not be reached or answered with an error status (an upstream fault)."""


class DataFormatError(EtlError):
    """The data source answered, but not with a usable CSV (HTML page, oversized, unparsable)."""


class DataSourceNotAllowedError(DataFormatError):
    """The data source may not be used: malformed, another scheme, a host not allowed or a non-public address
    (also on a redirect), or a local file outside DATA_DIR. Never retried."""


class DataValidationError(EtlError):
    """The CSV parsed, but its columns or values break the schema."""


class ModelNotFoundError(EtlError):
    """No model version with that name exists in the registry."""


class ReportNotFoundError(EtlError):
    """A version has no evaluation report (not evaluated yet, or written before reports existed), or the
    report has no figure of that name."""


class NoServedModelError(EtlError):
    """No version has been promoted yet, so there is nothing to serve."""

    HINT = "no model is served yet: train and evaluate one, or run `python -m etl run`"

    def __init__(self, message: str = HINT) -> None:
        super().__init__(message)


class ArtifactIntegrityError(EtlError):
    """An artifact on disk does not match the sha256 recorded for it, or is incomplete."""


class NotServableError(EtlError):
    """The version exists but may not be served (not evaluated yet, or it failed the quality gate)."""


class NotEvaluatedError(NotServableError):
    """The version has no metrics.json yet: evaluate it first."""


class TrainingInProgressError(EtlError):
    """Another training holds the registry's training lease."""


class UploadInProgressError(EtlError):
    """Another upload held the registry's upload lease for longer than this one could wait."""


class LeaseLostError(EtlError):
    """This trainer's lease expired and another trainer took it over: what it trained is not registered
    and it promotes nothing (the lease's token fences its writes)."""


class PromotionConflictError(EtlError):
    """The served pointer moved while this promotion was prepared (another promotion won the race, or the
    served model changed while a candidate was judged against it): nothing was switched."""


class StorageError(EtlError):
    """Uploading artifacts failed after all retries; the local backup (if any) is intact.

    Attributes:
        step: the step that failed (for example ``create folder`` or ``upload model.joblib``).
        backup_dir: where the local backup was written, if it was.
        retries: how many retries were taken before giving up.
    """

    def __init__(self, message: str, *, step: str, backup_dir: str | None = None, retries: int = 0) -> None:
        super().__init__(message)
        self.step = step
        self.backup_dir = backup_dir
        self.retries = retries


class DriveConfigError(StorageError):
    """Google Drive is configured wrongly, so retrying cannot help: the credentials file is missing or not a
    Google credential, the folder is not found or not shared with the account, or the account has no storage
    quota. A StorageError (with ``step`` and ``backup_dir``) whose message says what to fix."""


class ArtifactStoreError(StorageError):
    """An operation of the artifact store (etl/artifacts.py) failed: the store is unreachable, refused the
    credentials, or kept failing after the retries. ``step`` names the operation and the key (for example
    ``put_new v3/model.joblib``); the message never holds credentials or what the server said."""


class ArtifactExistsError(ArtifactStoreError):
    """A create-only write found the key already there; the object that was there is unchanged."""


class ArtifactNotFoundError(ArtifactStoreError):
    """No object is stored under the key that was read."""


class DatabaseUnavailableError(EtlError):
    """A database could not be reached, or refused a statement because of its own state (down, read-only,
    out of space, locked beyond the busy timeout); trying again later may succeed."""
