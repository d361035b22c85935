"""Reading Google credentials: a service-account key (optionally with domain-wide delegation) or an OAuth
authorized-user file. Messages name the file and the expected type, never the file's contents."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.auth.credentials import Credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from etl.errors import DriveConfigError

EXPECTED_KEY = (
    'a Google service-account JSON key ("type": "service_account", from IAM > Service accounts > Keys) '
    'or an OAuth user credential ("type": "authorized_user")'
)


@dataclass(frozen=True)
class LoadedCredentials:
    credentials: Credentials
    kind: str  # "service_account" | "authorized_user"
    principal: str  # who must have access to the folder (client_email, the impersonated user, ...)
    path: Path  # the file they were read from


def load_credentials(
    path: Path, scopes: Sequence[str], impersonate: str | None = None, token_uri: str | None = None
) -> LoadedCredentials:
    """Read a service-account key (optionally with domain-wide delegation) or an authorized-user file.

    ``token_uri`` overrides the token endpoint (tests): a service-account key names its own, but google-auth
    always sends authorized-user refreshes to Google's.

    Raises:
        DriveConfigError: the file is missing, unreadable, not JSON, or not one of the two Google types.
            The message names the path and the expected type, never the file's contents.
    """
    path = Path(path)
    info = _read_json_object(path)
    kind = info.get("type")
    if kind == "service_account":
        try:
            sa = service_account.Credentials.from_service_account_info(info, scopes=list(scopes))
        except (ValueError, TypeError, KeyError) as exc:
            raise _key_error(
                f"{path} is not a usable Google service-account key ({_safe_reason(exc)}); "
                f"expected {EXPECTED_KEY}"
            ) from None
        email = sa.service_account_email
        if token_uri:
            sa = sa.with_token_uri(token_uri)
        if impersonate:
            return LoadedCredentials(sa.with_subject(impersonate), "service_account", impersonate, path)
        return LoadedCredentials(sa, "service_account", email, path)
    if kind == "authorized_user":
        if impersonate:
            raise _key_error(
                f"GDRIVE_IMPERSONATE is set but {path} is an OAuth user credential; domain-wide delegation "
                "needs a service-account key"
            )
        try:
            user = user_credentials.Credentials.from_authorized_user_info(info, scopes=list(scopes))
        except (ValueError, TypeError, KeyError) as exc:
            raise _key_error(
                f"{path} is not a usable OAuth user credential ({_safe_reason(exc)}); expected {EXPECTED_KEY}"
            ) from None
        if token_uri:
            user = user.with_token_uri(token_uri)
        return LoadedCredentials(user, "authorized_user", f"the Google account that authorised {path}", path)
    shown = kind if isinstance(kind, str) and len(kind) <= 40 else "missing"
    raise _key_error(
        f'{path} is not a Google credentials file (its "type" is {shown!r}); expected {EXPECTED_KEY}'
    )


def _read_json_object(path: Path) -> dict[str, object]:
    if path.is_dir():
        raise _key_error(
            f"Google credentials file {path} is a directory (docker creates one when the file it should "
            f"mount is missing); expected {EXPECTED_KEY}"
        )
    if not path.is_file():
        raise _key_error(
            f"Google credentials file not found: {path} (GOOGLE_APPLICATION_CREDENTIALS). "
            f"Expected {EXPECTED_KEY}; see secrets/README.md for how to create one."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _key_error(
            f"{path} is not a Google credentials file (not a JSON text file; a .p12 key is not supported); "
            f"expected {EXPECTED_KEY}"
        ) from None
    except OSError as exc:
        raise _key_error(
            f"Google credentials file {path} cannot be read ({exc.strerror or type(exc).__name__}); "
            f"expected {EXPECTED_KEY}"
        ) from None
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise _key_error(
            f"{path} is not a Google credentials file (not a JSON object); expected {EXPECTED_KEY}"
        )
    return info


def _key_error(message: str) -> DriveConfigError:
    return DriveConfigError(message, step="read credentials")


def _safe_reason(exc: BaseException) -> str:
    """google-auth names missing fields; anything from the key parser becomes a generic note."""
    text = str(exc)
    if "missing fields" in text or "not in the expected format" in text:
        return text.split("\n", 1)[0][:200]
    return "the private key or a required field could not be parsed"
