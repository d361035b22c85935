"""The model registry: versions, their files and their evaluations, the served pointer, the training lease.

Two stores, one URL each (docs/replicas.md):

- the **database** (``REGISTRY_URL``; default ``sqlite:///RESULTS_DIR/registry.db``; PostgreSQL for several
  hosts) holds each version's metadata, the sha256 of each of its files and the HMAC signature of its
  model.json, its evaluations (metrics, the gate's verdict, where its report is), the served pointer with its
  epoch, the leases, the pinned reference set, and the only mutable per-version state (Drive progress,
  upload records). etl/registry_db/ has the tables and transactions.
- the **artifact store** (``ARTIFACT_URL``; default the folder ``RESULTS_DIR/models``; ``s3://`` for several
  hosts) holds the files, written once and never changed (etl/artifacts.py), under the keys in layout.py.

A version is published last: its files are written create-only, read back and checked, and only then is its
row inserted, under the trainer's lease (publishing.py); what a crash leaves behind, the next holder of the
training lease deletes (recovery.py). Evaluations are rows, never files: a re-evaluation adds a row, and its
report goes under a new ``reports/<id>/`` key. The pointer moves by compare-and-swap on its epoch
(``Registry.promote``). ``RESULTS_DIR/model.joblib`` and ``RESULTS_DIR/metrics.json`` mirror the served
version on each host that promotes, serves or recovers. Nothing here unpickles: every file is checked against
its signature or sha256 when read (reading.py).

``core`` (the ``Registry`` class: names, metadata, evaluations, leases, the pointer), ``layout`` (version
names, the store's keys), ``publishing`` (files first, checked, then the row), ``reading`` (files read back
and checked), ``promotion`` (the pointer's compare-and-swap), ``recovery`` (clean-up after a crash, the
RESULTS_DIR mirror). etl/registry_import.py imports an on-disk registry of the earlier layout.
"""

from etl.registry.core import UPLOAD_WAIT_SECONDS, Registry
from etl.registry.layout import (
    HOLDOUT_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_JSON,
    MUTABLE_META,
    NESTED_FILE,
    NESTED_MODELS_FILE,
    REFERENCE_PREFIX,
    REPORTS,
    REQUIRED_FILES,
    VERSION_RE,
    is_version,
    new_version_name,
    status_of,
)
from etl.registry.recovery import REPORT_GARBAGE_SECONDS
from etl.registry_db.lease import Lease
from etl.registry_db.store import Pointer, gate_passed

__all__ = [
    "HOLDOUT_FILE",
    "META_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "MODEL_JSON",
    "MUTABLE_META",
    "NESTED_FILE",
    "NESTED_MODELS_FILE",
    "REFERENCE_PREFIX",
    "REPORTS",
    "REPORT_GARBAGE_SECONDS",
    "REQUIRED_FILES",
    "UPLOAD_WAIT_SECONDS",
    "VERSION_RE",
    "Lease",
    "Pointer",
    "Registry",
    "gate_passed",
    "is_version",
    "new_version_name",
    "status_of",
]
