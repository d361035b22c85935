"""The model-signing key and HMAC signatures of the artifacts the service loads.

A sha256 recorded beside an artifact proves nothing to someone who can rewrite both. ``model.json`` is
therefore signed with an HMAC-SHA256 whose key lives outside the registry: ``MODEL_SIGNING_KEY`` (for
several hosts or containers: give every one the same value), or else the key file
``MODEL_SIGNING_KEY_FILE`` (default ``secrets/model_signing.key``), made with 32 random bytes and mode 0600
the first time a model is trained. Whoever can write ``results/`` but not the key cannot make the service
load a model of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path

from etl import atomic
from etl.errors import ArtifactIntegrityError

log = logging.getLogger(__name__)

KEY_BYTES = 32


def load_or_create_key(path: Path, *, create: bool = True) -> bytes:
    """The key in ``path``; made (0600, atomically, never overwritten) when missing and ``create``.

    Raises:
        ArtifactIntegrityError: no key file and ``create`` is false, or it cannot be read or is too short.
    """
    path = Path(path)
    if not path.exists() and create:
        made = atomic.create_file(path, secrets.token_hex(KEY_BYTES).encode() + b"\n")  # another may win
        if made:
            log.warning("made a new model-signing key in %s (keep it with the registry's backups)", path)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ArtifactIntegrityError(
            f"the model-signing key {path} cannot be read ({exc.strerror or type(exc).__name__}); set "
            "MODEL_SIGNING_KEY or MODEL_SIGNING_KEY_FILE"
        ) from None
    return check_key(key, str(path))


def check_key(key: bytes, where: str) -> bytes:
    if len(key) < KEY_BYTES:
        raise ArtifactIntegrityError(
            f"the model-signing key from {where} is shorter than {KEY_BYTES} bytes; generate one with "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return key


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def verify(key: bytes, data: bytes, signature: object) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(sign(key, data), signature)
