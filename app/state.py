"""The served model: loaded and verified off the hot path, swapped by one reference assignment."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from app import metrics
from etl.errors import EtlError, NoServedModelError
from etl.registry import Registry
from etl.scorer import LinearModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """Everything /predict needs, immutable, so a request sees one whole model from start to end."""

    version: str
    threshold: float
    scorer: LinearModel
    metrics: dict[str, Any]
    created_at: str | None


class ModelHolder:
    """Holds the served model. Readers take ``holder.current`` once per request; writers replace it whole."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.current: ServedModel | None = None
        self._swap_lock = threading.Lock()

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
        )

    def refresh(self) -> bool:
        """Serve whatever the registry's pointer names, if it differs from what is loaded.

        A version that fails to load is logged and the current model keeps serving. Returns True on a swap.
        """
        version = self.registry.served_version()
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
        metrics.set_served_model(
            model.version, model.metrics, model.threshold, current.version if current else None
        )
        log.info("now serving model version %s (threshold %.4f)", model.version, model.threshold)
        return True

    async def watch(self, interval: float) -> None:
        """Follow promotions made by other workers or the CLI (poll the pointer; load in a thread)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # the watcher must never die; the error is logged with its traceback
                log.exception("model watcher failed; will retry")
