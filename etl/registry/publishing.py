"""Publishing to the registry: a version, an evaluation's report, a reference set.

Each is published last: its files are written create-only under a key of their own (layout.py),
read back and checked against their sha256, and only then is the row that names them written. A version's
row is inserted in the transaction that checks the trainer's lease still holds (fencing), so a trainer whose
lease was taken over publishes nothing. A failure deletes what was uploaded; a crash before the row leaves
files no row names, which the next holder of the training lease deletes (recovery.py).
``Registry``'s publishing methods (core.py) call these.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from etl.errors import ArtifactExistsError, ArtifactIntegrityError, DatabaseUnavailableError, LeaseLostError
from etl.hashing import sha256_bytes
from etl.registry.layout import (
    MODEL_JSON,
    MUTABLE_META,
    REFERENCE_PREFIX,
    REPORTS,
    REQUIRED_FILES,
    is_version,
    new_version_name,
)
from etl.registry.reading import read_checked
from etl.signing import sign

if TYPE_CHECKING:
    from etl.registry.core import Registry
    from etl.registry_db.lease import Lease

log = logging.getLogger(__name__)

# what read_meta adds to the training metadata, from the version's own columns
_RECORDED = ("version", "created_at", "created_ns", "files", "model_signature")


def create_version(
    registry: Registry,
    version: str,
    files: dict[str, bytes],
    meta: dict[str, Any],
    *,
    lease: Lease | None = None,
) -> dict[str, Any]:
    if not is_version(version):
        raise ValueError(f"bad version name {version!r}")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ValueError(f"a version needs {missing}")
    if lease is None:
        with registry.training_lock() as held:
            return create_version(registry, version, files, meta, lease=held)
    if lease.lost.is_set():  # known already: spare the upload (the insert's own check is the guarantee)
        raise LeaseLostError(
            f"this process's {lease.name} lease expired and another process took it over: version "
            f"{version} is not published"
        )
    store = registry.store
    digests = {name: sha256_bytes(data) for name, data in files.items()}
    signature = sign(registry._signing_key(), files[MODEL_JSON])
    created_at = meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds")
    created_ns = time.time_ns()
    training_meta = {k: v for k, v in meta.items() if k not in (*_RECORDED, *MUTABLE_META)}
    try:
        for name, data in files.items():
            store.put_new(f"{version}/{name}", data)
        for name, digest in digests.items():  # read back: what the store holds is what was trained
            stored = store.sha256(f"{version}/{name}")
            if stored != digest:
                raise ArtifactIntegrityError(
                    f"{name} of version {version} reads back from {store.location} with sha256 "
                    f"{stored[:12]}..., not the {digest[:12]}... written; nothing is published"
                )
        registry._db.insert_version(
            {
                "version": version,
                "created_ns": created_ns,
                "created_at": created_at,
                "meta": training_meta,
                "files": digests,
                "model_signature": signature,
                "fingerprint": meta.get("fingerprint"),
                "status": "trained",
                "state": {},
                "lease_generation": lease.generation,
            },
            lease.fence,
        )
    except DatabaseUnavailableError:
        raise  # the insert may have committed: its files stay; recover() decides by the row
    except BaseException:
        with contextlib.suppress(Exception):  # garbage that recover() would remove anyway
            store.delete_prefix(version)
        raise
    log.info(
        "registered version %s (lease generation %d; model.json signed, sha256 %s)",
        version,
        lease.generation,
        digests[MODEL_JSON][:12],
    )
    return registry.read_meta(version)


def publish_report(
    registry: Registry, version: str, files: dict[str, bytes], evaluation_id: int | None = None
) -> dict[str, Any]:
    if evaluation_id is None:
        current = registry.evaluation(version)
        if current is None:
            raise ValueError(f"version {version} has no evaluation to attach a report to")
        evaluation_id = int(current["id"])
    store = registry.store
    prefix = f"{version}/{REPORTS}/{new_version_name(version)}"
    try:
        digests = {name: store.put_new(f"{prefix}/{name}", data) for name, data in files.items()}
        for name, digest in digests.items():
            if store.sha256(f"{prefix}/{name}") != digest:
                raise ArtifactIntegrityError(f"{name} of the report of version {version} reads back changed")
        record = {"prefix": prefix, "files": digests}
        registry._db.set_report(evaluation_id, record)
    except DatabaseUnavailableError:
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            store.delete_prefix(prefix)
        raise
    return record


def pin_reference(registry: Registry, data: bytes, rows: int, source: str) -> dict[str, Any]:
    digest = sha256_bytes(data)
    key = f"{REFERENCE_PREFIX}/{digest}.csv"
    if not registry.store.exists(key):
        with contextlib.suppress(ArtifactExistsError):  # written by a concurrent pin of the same set
            registry.store.put_new(key, data)
    read_checked(registry.store, key, digest, "the reference set")
    pin = {
        "sha256": digest,
        "rows": rows,
        "source": source[:300],
        "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "key": key,
    }
    registry._db.add_reference(pin)
    return pin
