"""Reading a version's files back from the artifact store, each checked before it is used: ``model.json``
against its HMAC signature (etl/signing.py) before it is parsed, every other file against the sha256 recorded
when it was written. Nothing here unpickles. ``Registry``'s reading methods (core.py) call these.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from etl.artifacts import ArtifactStore
from etl.errors import ArtifactIntegrityError, ArtifactNotFoundError
from etl.hashing import sha256_bytes
from etl.registry.layout import MODEL_FILE, MODEL_JSON, NESTED_FILE, NESTED_MODELS_FILE
from etl.scorer import LinearModel
from etl.signing import verify as verify_signature

if TYPE_CHECKING:
    from etl.registry.core import Registry


def read_checked(store: ArtifactStore, key: str, expected: object, what: str, missing: str = "") -> bytes:
    """The bytes under ``key``, if their sha256 is ``expected``; ``what`` names them in the error.

    Raises:
        ArtifactIntegrityError: missing (the message is ``missing`` when given), or changed.
    """
    try:
        data = store.get(key)
    except ArtifactNotFoundError:
        raise ArtifactIntegrityError(missing or f"{what} is missing from {store.location}") from None
    actual = sha256_bytes(data)
    if actual != expected:
        raise ArtifactIntegrityError(
            f"{what} fails its integrity check: sha256 {actual[:12]}... does not match "
            f"{str(expected)[:12]}... recorded when it was written; it was changed or damaged, so it "
            "will not be used"
        )
    return data


def read_file(registry: Registry, version: str, name: str, meta: dict[str, Any] | None = None) -> bytes:
    meta = meta or registry.read_meta(version)
    expected = (meta.get("files") or {}).get(name)
    if expected is None:
        raise ArtifactIntegrityError(f"version {version} has no {name}")
    return read_checked(
        registry.store,
        f"{version}/{name}",
        expected,
        f"{name} of version {version}",
        f"version {version} has no {name} (it is missing from {registry.store.location})",
    )


def load_model(registry: Registry, version: str) -> LinearModel:
    meta = registry.read_meta(version)
    try:
        data = registry.store.get(f"{version}/{MODEL_JSON}")
    except ArtifactNotFoundError:
        raise ArtifactIntegrityError(f"version {version} has no {MODEL_JSON}") from None
    if not verify_signature(registry._signing_key(), data, meta.get("model_signature")):
        raise ArtifactIntegrityError(
            f"{MODEL_JSON} of version {version} fails its integrity check: its signature does not match "
            "(changed after training, or signed with another MODEL_SIGNING_KEY), so it will not be loaded"
        )
    try:
        document = json.loads(data)
    except ValueError:
        raise ArtifactIntegrityError(f"{MODEL_JSON} of version {version} is not JSON") from None
    return LinearModel.from_dict(document)


def verify(registry: Registry, version: str) -> dict[str, Any]:
    load_model(registry, version)
    meta = registry.read_meta(version)
    expected = meta["files"].get(MODEL_FILE)
    try:
        actual = registry.store.sha256(f"{version}/{MODEL_FILE}")
    except ArtifactNotFoundError:
        raise ArtifactIntegrityError(f"version {version} has no {MODEL_FILE}") from None
    if actual != expected:
        raise ArtifactIntegrityError(
            f"{MODEL_FILE} of version {version} fails its integrity check: sha256 {actual[:12]}... does "
            f"not match {str(expected)[:12]}... recorded at training; it was changed or damaged, so it "
            "will not be used"
        )
    return meta


def load_nested(registry: Registry, version: str) -> pd.DataFrame | None:
    meta = registry.read_meta(version)
    if NESTED_FILE not in meta["files"]:
        return None
    return pd.read_csv(io.BytesIO(read_file(registry, version, NESTED_FILE, meta)))


def load_nested_models(registry: Registry, version: str) -> list[LinearModel]:
    meta = registry.read_meta(version)
    if NESTED_MODELS_FILE not in meta["files"]:
        return []
    data = read_file(registry, version, NESTED_MODELS_FILE, meta)
    try:
        documents = json.loads(data)
    except ValueError:
        raise ArtifactIntegrityError(f"{NESTED_MODELS_FILE} of version {version} is not JSON") from None
    if not isinstance(documents, list):
        raise ArtifactIntegrityError(f"{NESTED_MODELS_FILE} of version {version} is not a list")
    return [LinearModel.from_dict(d) for d in documents]


def fetch_file(registry: Registry, version: str, name: str, dest: Path) -> Path:
    expected = registry.read_meta(version)["files"].get(name)
    if expected is None:
        raise ArtifactIntegrityError(f"version {version} has no {name}; it cannot be copied")
    try:
        registry.store.get_file(f"{version}/{name}", dest, sha256=expected)
    except ArtifactNotFoundError:
        raise ArtifactIntegrityError(f"version {version} has no {name}; it cannot be copied") from None
    return dest


def read_report_file(registry: Registry, version: str, name: str) -> bytes | None:
    record = registry.report(version)
    expected = (record or {}).get("files", {}).get(name)
    if record is None or expected is None:
        return None
    return read_checked(
        registry.store, f"{record['prefix']}/{name}", expected, f"{name} of version {version}"
    )
