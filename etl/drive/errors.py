"""What Drive's errors mean: which are worth retrying, a one-line account of each, and the message that says
what to fix when retrying cannot help. Messages name the folder variable and the account, never a URL (a
resumable session URL is a capability), a key or a token."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass

from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from etl.drive.credentials import LoadedCredentials
from etl.errors import DriveConfigError, StorageError

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
NO_ACCESS_REASONS = frozenset({"insufficientFilePermissions", "forbidden", "appNotAuthorizedToFile"})


@dataclass(frozen=True)
class Target:
    """Who uploads where: what a configuration message must name."""

    parent_folder_id: str
    creds: LoadedCredentials


def error_reasons(exc: HttpError) -> set[str]:
    try:
        data = json.loads(exc.content.decode("utf-8"))
        return {str(e.get("reason")) for e in data["error"]["errors"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, server errors, dropped connections, timeouts."""
    if isinstance(exc, HttpError):
        status = exc.resp.status
        return status in TRANSIENT_STATUSES or (
            status == 403 and bool(error_reasons(exc) & RATE_LIMIT_REASONS)
        )
    if isinstance(exc, auth_exceptions.TransportError):
        return True
    if isinstance(exc, auth_exceptions.RefreshError):
        return bool(getattr(exc, "retryable", False))
    return isinstance(
        exc,
        (
            TimeoutError,  # socket.timeout is an alias
            ConnectionError,  # reset, refused, aborted, broken pipe
            http.client.HTTPException,  # incomplete read, remote end closed
            ssl.SSLEOFError,  # the peer vanished in the middle of TLS
            ssl.SSLZeroReturnError,
        ),
    )


def describe(exc: BaseException) -> str:
    """A one-line account of an error, with no URL."""
    if isinstance(exc, HttpError):
        reasons = ", ".join(sorted(error_reasons(exc))) or exc.resp.reason
        return f"HTTP {exc.resp.status} {reasons}: {exc.reason}"
    if isinstance(exc, auth_exceptions.RefreshError):
        return f"token request refused: {str(exc.args[0] if exc.args else exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__


def gave_up(step: str, last: BaseException, elapsed: float, retries: int, limits: str) -> StorageError:
    return StorageError(
        f"Google Drive kept failing with transient errors, last {describe(last)} ({elapsed:.1f}s; limits "
        f"{limits})",
        step=step,
        retries=retries,
    )


def not_a_folder(parent_folder_id: str) -> DriveConfigError:
    return DriveConfigError(
        f"GDRIVE_FOLDER_ID={parent_folder_id} is not a folder (or is in the trash); set it to the id of a "
        "Drive folder (the last part of its URL, https://drive.google.com/drive/folders/<id>)",
        step="check folder",
    )


def no_access_message(target: Target, what: str) -> str:
    who = target.creds.principal
    if target.creds.kind == "service_account":
        how = (
            f"share the folder with {who} as Editor (Share > add {who}), or, in a Shared Drive, add {who} "
            "as a Content manager member"
        )
    else:
        how = "share the folder with that Google account as Editor"
    return (
        f"Google Drive folder GDRIVE_FOLDER_ID={target.parent_folder_id} was not found, or {who} {what} it: "
        f"check GDRIVE_FOLDER_ID and {how}"
    )


def _quota_message(target: Target) -> str:
    who = target.creds.principal
    return (
        f"Google Drive refused the upload with storageQuotaExceeded: service accounts have no storage of "
        f"their own in a user's My Drive, so {who} cannot own files in a folder that is merely shared with "
        f"it. Fix one of: put GDRIVE_FOLDER_ID in a Shared Drive and add {who} as a member "
        "(Content manager); "
        "or use domain-wide delegation (GDRIVE_IMPERSONATE=<user in your Workspace domain>) so the files "
        'count against that user\'s storage; or use an OAuth user credential ("type": "authorized_user") '
        "in GOOGLE_APPLICATION_CREDENTIALS"
    )


def config_error(exc: HttpError, step: str, target: Target, retries: int) -> StorageError:
    """Turn a non-transient Drive answer into the error that says what to fix."""
    status, reasons = exc.resp.status, error_reasons(exc)
    if "storageQuotaExceeded" in reasons:
        return DriveConfigError(_quota_message(target), step=step, retries=retries)
    if status == 401:
        return DriveConfigError(
            f"Google Drive rejected the access token of {target.creds.principal} ({describe(exc)}); check "
            f"the credentials in {target.creds.path}",
            step=step,
            retries=retries,
        )
    in_folder_step = step in ("check folder", "create folder") or step.startswith("upload ")
    if status == 404 and in_folder_step:
        return DriveConfigError(no_access_message(target, "has no access to"), step=step, retries=retries)
    if status == 403 and (reasons & NO_ACCESS_REASONS or step in ("check folder", "create folder")):
        return DriveConfigError(
            no_access_message(target, "is not allowed to add files to"), step=step, retries=retries
        )
    if status == 403:
        return DriveConfigError(
            f"Google Drive refused {target.creds.principal} ({describe(exc)}): check that it may write to "
            f"GDRIVE_FOLDER_ID={target.parent_folder_id} and that the Drive API is enabled in its project",
            step=step,
            retries=retries,
        )
    return StorageError(f"Google Drive answered {describe(exc)}", step=step, retries=retries)


def auth_error(exc: auth_exceptions.RefreshError, target: Target, retries: int) -> DriveConfigError:
    creds = target.creds
    hint = ""
    if creds.kind == "service_account" and creds.principal != getattr(
        creds.credentials, "service_account_email", None
    ):
        hint = (
            f"; for GDRIVE_IMPERSONATE={creds.principal} a Workspace admin must grant domain-wide "
            "delegation to the service account's client id for the scopes in GDRIVE_SCOPES"
        )
    return DriveConfigError(
        f"Google rejected the credentials in {creds.path} ({describe(exc)}): check that the key "
        f"is current (not deleted or rotated) and the account is enabled{hint}",
        step="authenticate",
        retries=retries,
    )
