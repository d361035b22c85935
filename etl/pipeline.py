"""The pipeline's entry points, for the service and the CLI alike: each step, the whole run, the model list.

The steps live in their own modules (etl/training.py, etl/judging.py, etl/upload_results.py); this module
wires them into one run and names them in one place. Nothing here knows about HTTP or Airflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from etl.errors import EtlError, NotServableError
from etl.evaluate import HEADLINE
from etl.judging import EvaluateSummary, evaluate_version
from etl.registry import Registry, status_of
from etl.settings import Settings
from etl.training import TrainSummary, train_version
from etl.upload_results import UploadResult, upload_to_storage

log = logging.getLogger(__name__)

__all__ = [
    "EvaluateSummary",
    "RunResult",
    "TrainSummary",
    "UploadResult",
    "evaluate_version",
    "list_models",
    "open_registry",
    "run_all",
    "train_version",
    "upload_to_storage",
]


def open_registry(settings: Settings) -> Registry:
    """The registry at REGISTRY_URL and ARTIFACT_URL (by default in RESULTS_DIR), signing with
    MODEL_SIGNING_KEY (or its key file)."""
    return Registry.from_settings(settings, settings.signing_key())


@dataclass
class RunResult:
    """What a whole run did.

    ``unchanged``: the data, settings and libraries were those of an existing version (``status`` says what
    became of it), so nothing was evaluated or uploaded. ``failed``: a step failed and an earlier promoted
    version (``served_version``) goes on being served (``serve_fallback``).
    """

    version: str | None
    served_version: str | None
    trained: TrainSummary | None = None
    evaluated: EvaluateSummary | None = None
    uploaded: UploadResult | None = None
    unchanged: bool = False
    status: str | None = None
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.failed is not None:
            return {"failed": self.failed, "served_version": self.served_version}
        if self.trained is None or self.evaluated is None or self.uploaded is None:
            return {"version": self.version, "unchanged": self.unchanged, "status": self.status}
        return {
            "version": self.version,
            "rows": self.trained.rows,
            "metrics": {k: self.evaluated.metrics[k] for k in HEADLINE},
            "unchanged": self.unchanged,
            "nested": {k: v["mean"] for k, v in self.trained.nested["metrics"].items()},
            "promoted": self.evaluated.promoted,
            "backup_dir": self.uploaded.backup_dir,
            "drive": self.uploaded.drive,
        }


def run_all(
    settings: Settings, registry: Registry, data_url: str | None = None, *, serve_fallback: bool = False
) -> RunResult:
    """Recover from any interrupted run, then train, evaluate (promote if the gate passes) and back up.

    The training lease is held from the training to the promotion, so a run that stalled past its lease's
    expiry and was taken over promotes nothing (its lease token no longer fences).

    Args:
        settings: the pipeline's settings.
        registry: the model registry.
        data_url: another data source than DATA_URL (the override rules apply).
        serve_fallback: when a step fails but an earlier promoted version exists, log the failure and return
            a result with ``failed`` set instead of raising.

    Returns:
        RunResult; ``unchanged`` when the same training was already registered.

    Raises:
        EtlError: a step failed (``NotServableError`` for a gate rejection), unless ``serve_fallback``
            found an earlier promoted version.
    """
    registry.recover()
    try:
        with registry.training_lock() as lease:
            trained = train_version(settings, registry, data_url, lease=lease)
            status = registry.status(trained.version)
            if trained.unchanged and status != "trained":
                log.info(
                    "data unchanged since version %s (%s): nothing to evaluate or upload",
                    trained.version,
                    status,
                )
                return RunResult(trained.version, registry.served_version(), unchanged=True, status=status)
            evaluated = evaluate_version(settings, registry, trained.version, promote=True, lease=lease)
        if not evaluated.gate.passed:
            raise NotServableError(
                f"version {trained.version} failed the quality gate: " + "; ".join(evaluated.gate.reasons)
            )
        uploaded = upload_to_storage(trained.version, registry=registry, settings=settings)
    except EtlError as exc:
        served = registry.served_version()
        if not serve_fallback or served is None:
            raise
        log.error("pipeline failed: %s", exc)
        log.warning("serving the earlier promoted version %s instead", served)
        return RunResult(None, served, failed=str(exc))
    return RunResult(
        trained.version,
        registry.served_version(),
        trained,
        evaluated,
        uploaded,
        unchanged=trained.unchanged,
        status=registry.status(trained.version),
    )


def list_models(registry: Registry) -> dict[str, Any]:
    """Every version, oldest first, with its status, headline metrics and which one is served.

    Returns:
        ``{"served_version": str | None, "epoch": int, "models": [{"version", "created_at", "status",
        "servable", "served", "has_report", "metrics": {HEADLINE name: value} or None}]}``; ``status`` is
        ``trained`` (not evaluated), ``passed`` or ``rejected`` (the quality gate's verdict); ``epoch`` is
        the served pointer's (a promotion may require it: ``expected_epoch``).
    """
    pointer = registry.pointer()
    models = []
    for row in registry.listing():
        metrics = row["metrics"]
        status = status_of(metrics)
        models.append(
            {
                "version": row["version"],
                "created_at": row["created_at"],
                "status": status,
                "servable": status == "passed",
                "served": row["version"] == pointer.version,
                "has_report": row["report"] is not None,
                "metrics": {k: float(metrics[k]) for k in HEADLINE if k in metrics} if metrics else None,
            }
        )
    return {"served_version": pointer.version, "epoch": pointer.epoch, "models": models}
