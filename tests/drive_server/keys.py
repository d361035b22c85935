"""Credentials made at test time: a fresh RSA service-account key and an OAuth authorized-user file.

Nothing secret is committed; every key exists only for one test session, in a temporary directory.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.drive_server.state import DriveState

SA_EMAIL = "bcd-uploader@bcd-test-project.iam.gserviceaccount.com"


def make_service_account_key(
    path: Path, state: DriveState, *, client_email: str = SA_EMAIL, register: bool = True
) -> str:
    """Write a service-account JSON key whose ``token_uri`` is the test server; return the private key PEM.

    With ``register`` the server learns the public key, so JWTs signed with this key are accepted.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": "bcd-test-project",
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": client_email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": f"{state.base_url}/auth",
        "token_uri": state.token_uri,
        "auth_provider_x509_cert_url": f"{state.base_url}/certs",
        "universe_domain": "googleapis.com",
    }
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    if register:
        state.register_service_account(client_email, public_pem)
    return private_pem


def make_authorized_user_file(path: Path, state: DriveState) -> str:
    """Write an OAuth ``authorized_user`` file (as ``gcloud auth application-default login`` does); return its
    refresh token."""
    client_id = f"{secrets.randbelow(10**12)}-test.apps.googleusercontent.com"
    client_secret = secrets.token_urlsafe(24)
    refresh_token = "1//" + secrets.token_urlsafe(48)
    info = {
        "type": "authorized_user",
        "client_id": client_id,
        "client_secret": client_secret,
        "refresh_token": refresh_token,
        "token_uri": state.token_uri,
    }
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    state.register_oauth_client(client_id, client_secret, refresh_token)
    return refresh_token
