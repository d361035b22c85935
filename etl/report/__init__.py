"""The evaluation report of a version: the curves, the calibration and the gate's verdict that people look at
before a model may be served.

At evaluation (etl/judging.py), right after the metrics are recorded, ``write_report`` renders one
self-contained ``report.html`` (styles inline, figures inline as PNG data, no script, nothing from another
host: it opens from a file or an e-mail attachment) and each figure as ``report/<name>.png``, and stores them,
never to change, under a new ``<version>/reports/<id>/`` in the artifact store; the evaluation's row in the
registry names them with their sha256 (etl/registry/publishing.py). ``python -m etl report VERSION`` writes
them again (under another id).

Every number the report prints comes from metrics.json, formatted in one place (``Page.number``) inside an
element naming its JSON pointer and format (``data-metric``, ``data-format``), so a test can check them all.
The curves are drawn from the version's predictions: holdout.csv scored with model.json, and nested.csv.

Where each part lives:

    __init__.py   writing a report to the artifact store and reading it back (this module)
    files.py      the report's files: report.html, the figures' names, the Content-Security-Policy
    page.py       ``Page``: metrics.json and the one way its values are printed
    figures.py    the figures (matplotlib, imported only inside the functions that draw, so the service's
                  start-up and /predict never load a plotting library)
    document.py   report.html, section by section
    card.py       the model card section
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from etl.errors import NotEvaluatedError, ReportNotFoundError
from etl.features import FEATURE_COLUMNS, TARGET_COLUMN
from etl.locks import file_lock
from etl.registry import Registry, is_version
from etl.report.card import INTENDED_USE, LIMITATIONS
from etl.report.document import NAV, PCT95, RESEARCH_ONLY, STYLE, SUMMARY_ROWS, render_html
from etl.report.figures import BLUE, DPI, GREEN, GREY, RED, Curves, render_figures
from etl.report.files import CONTENT_SECURITY_POLICY, FIGURE_DIR, FIGURES, REPORT_FILE, figure_file
from etl.report.page import NA, Page

# what callers import from etl.report, wherever it is defined
__all__ = [
    "BLUE",
    "CONTENT_SECURITY_POLICY",
    "DPI",
    "FIGURES",
    "FIGURE_DIR",
    "GREEN",
    "GREY",
    "INTENDED_USE",
    "LIMITATIONS",
    "NA",
    "NAV",
    "PCT95",
    "RED",
    "REPORT_FILE",
    "RESEARCH_ONLY",
    "STYLE",
    "SUMMARY_ROWS",
    "Curves",
    "Page",
    "ReportResult",
    "figure_file",
    "has_report",
    "read_report",
    "render_figures",
    "render_html",
    "write_report",
]

log = logging.getLogger(__name__)


@dataclass
class ReportResult:
    version: str
    path: str  # where report.html is: a local path, or its s3:// URL
    files: dict[str, str]  # name among the report's files -> sha256
    duration_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "report": self.path,
            "files": self.files,
            "duration_seconds": self.duration_seconds,
        }


def write_report(registry: Registry, version: str, evaluation_id: int | None = None) -> ReportResult:
    """Write ``report.html`` and the figures of an evaluated version (its evaluation ``evaluation_id``,
    default the current one) to the artifact store, and record them with the evaluation.

    Raises:
        ModelNotFoundError: no such version.
        NotEvaluatedError: it has not been evaluated yet.
        ArtifactIntegrityError: model.json, holdout.csv or nested.csv fail their integrity checks.
    """
    started = time.monotonic()
    evaluation = registry.evaluation(version)
    if evaluation is None:
        raise NotEvaluatedError(
            f"version {version} has not been evaluated: its report is written at evaluation"
        )
    evaluation_id = int(evaluation["id"]) if evaluation_id is None else evaluation_id
    metrics = dict(evaluation["metrics"])
    model = registry.load_model(version)
    holdout = registry.load_holdout(version)
    proba = model.proba(holdout.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float))
    curves = Curves(holdout[TARGET_COLUMN].to_numpy(), proba, registry.load_nested(version))
    # one writer at a time in this process tree: matplotlib's state is not shared safely between threads
    registry.root.mkdir(parents=True, exist_ok=True)
    with file_lock(registry.root / ".report.lock"):
        page = Page(metrics)
        pngs = render_figures(page, curves)
        document = render_html(page, pngs).encode()
    files = {figure_file(name): data for name, data in pngs.items()} | {REPORT_FILE: document}
    record = registry.publish_report(version, files, evaluation_id)
    duration = time.monotonic() - started
    log.info(
        "report: wrote %s and %d figures of version %s in %.2fs (%d KB)",
        REPORT_FILE,
        len(pngs),
        version,
        duration,
        len(document) // 1024,
    )
    location = registry.store.url_of(f"{record['prefix']}/{REPORT_FILE}")
    return ReportResult(version, location, dict(record["files"]), duration)


def has_report(registry: Registry, version: str) -> bool:
    return is_version(version) and registry.report(version) is not None


def read_report(registry: Registry, version: str, figure: str | None = None) -> bytes:
    """``report.html`` of a version, or its figure ``figure`` (a name of ``FIGURES``), checked against the
    sha256 recorded when it was written.

    Raises:
        ModelNotFoundError: no such version.
        ReportNotFoundError: not evaluated yet, no report written, or no figure of that name.
        ArtifactIntegrityError: the file is missing or changed since it was written.
    """
    registry.check_version(version)
    if figure is not None and figure not in FIGURES:
        raise ReportNotFoundError(f"no such figure: the report's figures are {', '.join(FIGURES)}")
    name = REPORT_FILE if figure is None else figure_file(figure)
    data = registry.read_report_file(version, name)
    if data is None:
        if registry.evaluation(version) is None:
            raise ReportNotFoundError(
                f"version {version} has not been evaluated yet: its report is written at evaluation"
            )
        raise ReportNotFoundError(
            f"version {version} has no report: write it with `python -m etl report {version}`"
        )
    return data
