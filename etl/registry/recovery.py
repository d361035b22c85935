"""Recovery and clean-up: what a crash leaves behind, and the copies of the served version in RESULTS_DIR.

A crash before a version's row is inserted (publishing.py) leaves files no row names; the next holder
of the training lease (``recover``, at each start of the service and of each pipeline run) deletes them, and
the reports no evaluation points at once they are old enough that no writing can still be under way.
``RESULTS_DIR/model.joblib`` and ``RESULTS_DIR/metrics.json`` mirror the served version on each host that
promotes, serves or recovers (``sync_mirror``), copied only from checked bytes. ``Registry``'s ``recover`` and
``sync_mirror`` (core.py) call these.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from etl import atomic
from etl.errors import ArtifactIntegrityError, ModelNotFoundError, TrainingInProgressError
from etl.hashing import sha256_file
from etl.locks import file_lock
from etl.registry.layout import META_FILE, METRICS_FILE, MODEL_FILE, REPORTS, is_version, name_time

if TYPE_CHECKING:
    from etl.registry.core import Registry

log = logging.getLogger(__name__)

# an unreferenced report this old is garbage from an interrupted writing (none takes an hour)
REPORT_GARBAGE_SECONDS = 3600.0


def sync_mirror(registry: Registry) -> bool:
    root = registry.root
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".registry.lock"):
        served = registry.served_version()
        if served is None:
            return False
        meta = registry.verify(served)  # never copy a damaged or tampered file over the mirror
        changed = False
        mirror = root / MODEL_FILE
        if not mirror.is_file() or sha256_file(mirror) != meta["files"][MODEL_FILE]:
            registry.fetch_file(served, MODEL_FILE, mirror)
            changed = True
        metrics = registry.read_metrics(served)
        wanted = atomic.json_bytes(metrics) if metrics is not None else None
        metrics_mirror = root / METRICS_FILE
        current = metrics_mirror.read_bytes() if metrics_mirror.is_file() else None
        if wanted is not None and current != wanted:
            atomic.write_bytes(metrics_mirror, wanted)
            changed = True
    return changed


def recover(registry: Registry) -> list[str]:
    root = registry.root
    removed: list[str] = []
    if root.is_dir():
        removed += [str(p) for p in atomic.remove_leftovers(root)]
    if registry.default_layout and (root / "models").is_dir():
        # staging folders of the on-disk registry before the artifact store
        removed += [str(p) for p in atomic.remove_leftovers(root / "models")]
    try:
        with registry.training_lock():
            removed += collect_garbage(registry)
    except TrainingInProgressError:
        log.info("a training is running elsewhere: what it is uploading is left alone")
    try:
        if sync_mirror(registry):
            log.warning("re-synced %s and %s with the served version", MODEL_FILE, METRICS_FILE)
    except (ModelNotFoundError, ArtifactIntegrityError) as exc:
        log.error("the served pointer names an unusable version: %s", exc)
    if removed:
        log.warning("removed %d leftover(s) of an interrupted run: %s", len(removed), ", ".join(removed))
    return removed


def collect_garbage(registry: Registry) -> list[str]:
    """Prefixes in the store that no row refers to: unfinished publications of versions, and reports
    older than REPORT_GARBAGE_SECONDS. Call with the training lease held."""
    store = registry.store
    removed = []
    published = set(registry.versions())
    for folder in store.folders():
        if not is_version(folder) or folder in published:
            continue
        if store.exists(f"{folder}/{META_FILE}"):  # a version of the on-disk layout, not imported
            log.warning(
                "%s holds version %s of the earlier on-disk layout, which the registry does not list: "
                "import it with `python -m etl registry import`",
                store.location,
                folder,
            )
            continue
        store.delete_prefix(folder)
        removed.append(folder)
    in_use = registry._db.reports_in_use()
    for version in published:
        for report_id in store.folders(f"{version}/{REPORTS}"):
            prefix = f"{version}/{REPORTS}/{report_id}"
            written = name_time(report_id)
            old = written is not None and time.time() - written > REPORT_GARBAGE_SECONDS
            if prefix not in in_use and old:
                store.delete_prefix(prefix)
                removed.append(prefix)
    return removed
