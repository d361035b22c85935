"""A Drive-compatible test server: the parts of the Drive v3 API and the OAuth2 token endpoint we use.

The real ``google-auth`` and ``google-api-python-client`` talk to it over TLS on 127.0.0.1 (a ``trustme`` test
CA), so the code under test is exactly what runs against Google. The server keeps everything it receives in a
``DriveState`` the tests read (file bytes, calls, issued tokens) and can inject faults.
"""

from tests.drive_server.keys import make_authorized_user_file, make_service_account_key
from tests.drive_server.runner import DriveEnv, RunningDriveServer, drive_env, run_drive_server
from tests.drive_server.state import DriveState, Fault, StoredFile

__all__ = [
    "DriveEnv",
    "DriveState",
    "Fault",
    "RunningDriveServer",
    "StoredFile",
    "drive_env",
    "make_authorized_user_file",
    "make_service_account_key",
    "run_drive_server",
]
