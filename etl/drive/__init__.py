"""Google Drive upload: google-auth + google-api-python-client (Drive v3).

``config`` (one typed settings object), ``credentials`` (reading the key file), ``client`` (the Drive
calls), ``errors`` (what Drive's errors mean and the messages that say what to fix), ``upload`` (the
idempotent, retried upload of a folder of files).
"""

from etl.drive.client import DriveFile, build_drive_service, mime_type_of
from etl.drive.config import DriveConfig, drive_config
from etl.drive.credentials import LoadedCredentials, load_credentials
from etl.drive.errors import is_transient
from etl.drive.upload import DriveResult, upload_to_drive

__all__ = [
    "DriveConfig",
    "DriveFile",
    "DriveResult",
    "LoadedCredentials",
    "build_drive_service",
    "drive_config",
    "is_transient",
    "load_credentials",
    "mime_type_of",
    "upload_to_drive",
]
