"""The prediction core: the served model, the holder that swaps it, and the answers of /predict and
/predict/batch (body, record, metrics), built here for both the FastAPI routes and the pure ASGI fast path
(app/middleware.py).

The model is loaded and verified off the hot path and swapped by one reference assignment, so a request
sees one whole model from start to end. Every replica follows the registry's served pointer (a database row
it polls every MODEL_POLL_SECONDS): a new version is downloaded from the artifact store, its model.json
checked against its signature (MODEL_SIGNING_KEY, the same on every replica) and loaded; only then is it
swapped in, the old model answering until that moment. Each answer says which version gave it: the
``X-Model-Version`` header, built once per model (``ServedModel.version_header``) so the fast path pays
nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from app import metrics
from app.records.pending import ManyPending, OnePending, Pending
from etl.errors import DatabaseUnavailableError, EtlError, NoServedModelError
from etl.features import LABELS
from etl.registry import Registry
from etl.scorer import LinearModel

if TYPE_CHECKING:
    from app.records.service import PredictionRecords

log = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "X-Model-Version"  # which model version answered (every replica sets it)
VERSION_HEADER = MODEL_VERSION_HEADER.lower().encode()


@dataclass(frozen=True)
class ServedModel:
    """Everything /predict needs, immutable, so a request sees one whole model from start to end."""

    version: str
    threshold: float
    scorer: LinearModel
    metrics: dict[str, Any]
    created_at: str | None
    # meta.json's feature_distribution: the training rows' scores, the reference of input drift (None for a
    # version trained before it was recorded)
    feature_distribution: dict[str, Any] | None = None
    # the X-Model-Version header of every answer this model gives, encoded once
    version_header: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version_header", (VERSION_HEADER, self.version.encode("ascii")))


class ModelHolder:
    """Holds the served model. Readers take ``holder.current`` once per request; writers replace it whole."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.current: ServedModel | None = None
        self._swap_lock = threading.Lock()
        self._unreachable = False  # the registry's database failed at the last poll

    def get(self) -> ServedModel:
        model = self.current
        if model is None:
            raise NoServedModelError()
        return model

    def load(self, version: str) -> ServedModel:
        """Read model.json (plain data, checked against its signature). Raises EtlError on any failure."""
        model = self.registry.load_model(version)
        meta = self.registry.read_meta(version)
        return ServedModel(
            version=version,
            threshold=model.threshold,
            scorer=model,
            metrics=self.registry.read_metrics(version) or {},
            created_at=meta.get("created_at"),
            feature_distribution=meta.get("feature_distribution"),
        )

    def refresh(self) -> bool:
        """Serve whatever the registry's pointer names, if it differs from what is loaded.

        A version that fails to load is logged and the current model keeps serving. Returns True on a swap.
        """
        pointer = self.registry.pointer()
        version = pointer.version
        current = self.current
        if version is None or (current is not None and current.version == version):
            return False
        with self._swap_lock:
            current = self.current
            if current is not None and current.version == version:
                return False
            try:
                model = self.load(version)
            except (EtlError, OSError, ValueError, KeyError) as exc:
                log.error(
                    "cannot serve version %s, keeping %s: %s", version, current and current.version, exc
                )
                return False
            self.current = model
        metrics.set_served_model(model.version, model.metrics, model.threshold)
        log.info(
            "now serving model version %s (pointer epoch %d, threshold %.4f)",
            model.version,
            pointer.epoch,
            model.threshold,
        )
        try:  # RESULTS_DIR/model.joblib and metrics.json follow what this host serves
            self.registry.sync_mirror()
        except Exception as exc:  # a copy for people; serving does not depend on it
            log.warning("could not refresh the served copies in %s: %s", self.registry.root, exc)
        return True

    async def watch(self, interval: float) -> None:
        """Follow promotions made by other workers, replicas or the CLI (poll the pointer; load in a
        thread). While the registry's database is unreachable, the loaded model goes on serving."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.refresh)
            except DatabaseUnavailableError as exc:
                if not self._unreachable:
                    log.warning("cannot follow promotions, still serving what is loaded: %s", exc)
                self._unreachable = True
                continue
            except Exception:  # the watcher must never die; the error is logged with its traceback
                log.exception("model watcher failed; will retry")
                continue
            if self._unreachable:
                log.info("the registry's database answers again: following promotions")
                self._unreachable = False


# --- response bodies ----------------------------------------------------------------------------


class Answer(NamedTuple):
    """A prediction's response body and what goes on record. ``counted()`` records the metrics and returns
    the body: call it once the answer is certain (after ``PredictionRecords.save``), so an answer that
    PREDICTION_LOG=sync refuses with 503 is not counted as served."""

    body: dict[str, Any]
    pending: Pending | None
    probabilities: Sequence[float] | np.ndarray
    classes: Sequence[int] | np.ndarray
    batch: bool

    def counted(self) -> dict[str, Any]:
        if self.batch:
            metrics.BATCH_ROWS.observe(len(self.probabilities))
            metrics.record_predictions(self.probabilities, self.classes)
        else:
            metrics.record_prediction(self.probabilities[0], self.classes[0])
        return self.body


def predict_one(model: ServedModel, row: tuple[int, ...], records: PredictionRecords) -> Answer:
    """The /predict answer for one row of the nine features (model column order)."""
    p = model.scorer.proba_one(row)
    cls = 1 if p >= model.threshold else 0
    if not records.enabled:
        body = {
            "label": LABELS[cls],
            "class": cls,
            "probability_malignant": p,
            "threshold": model.threshold,
            "model_version": model.version,
        }
        return Answer(body, None, (p,), (cls,), False)
    pid = records.mint.next_id()
    body = {
        "prediction_id": pid,
        "label": LABELS[cls],
        "class": cls,
        "probability_malignant": p,
        "threshold": model.threshold,
        "model_version": model.version,
    }
    pending: OnePending = (pid, time.time_ns() // 1000, model.version, model.threshold, p, cls, row)
    return Answer(body, pending, (p,), (cls,), False)


def predict_many(model: ServedModel, X: np.ndarray, records: PredictionRecords) -> Answer:
    """The /predict/batch answer for an (n, 9) float array, predictions in row order."""
    probs = model.scorer.proba(X)
    malignant = probs >= model.threshold
    p_list, classes = probs.tolist(), malignant.astype(np.int8).tolist()
    labels = LABELS
    pending = None
    if records.enabled:
        mint = records.mint
        ids = mint.ids(mint.prefix, mint.take(len(p_list)), len(p_list))
        predictions = [
            {"prediction_id": i, "label": labels[c], "class": c, "probability_malignant": p}
            for i, p, c in zip(ids, p_list, classes, strict=True)
        ]
        pending = ManyPending(
            ids, time.time_ns() // 1000, model.version, model.threshold, probs, malignant, X
        )
    else:
        predictions = [
            {"label": labels[c], "class": c, "probability_malignant": p}
            for p, c in zip(p_list, classes, strict=True)
        ]
    body = {"model_version": model.version, "threshold": model.threshold, "predictions": predictions}
    return Answer(body, pending, probs, malignant, True)


def batch_too_large(count: int, max_batch: int) -> str | None:
    """Why a batch of ``count`` instances is refused (the 422's message), or None when MAX_BATCH allows it."""
    if count > max_batch:
        return f"at most MAX_BATCH={max_batch} instances per request, got {count}"
    return None
