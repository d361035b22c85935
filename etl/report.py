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

matplotlib (Agg) is imported only inside the functions that draw, so the service's start-up and /predict never
load a plotting library.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from etl.errors import NotEvaluatedError, ReportNotFoundError
from etl.features import FEATURE_COLUMNS, TARGET_COLUMN
from etl.locks import file_lock
from etl.registry import Registry, is_version

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
FIGURE_DIR = "report"
# name -> what it shows (its alt text); GET /models/{version}/report/{name}.png serves exactly these
FIGURES: dict[str, str] = {
    "roc": "ROC curve: held-out curve, nested-CV band, operating point",
    "pr": "Precision-recall curve: held-out curve, nested-CV band, operating point",
    "threshold": "Recall, precision and specificity against the threshold",
    "calibration": "Reliability diagram and predicted-probability histograms",
    "confusion": "Confusion matrices with counts and rates",
}
# the report allows nothing but its inline styles and data: images; the service sends it as a header too
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)
DPI = 100
NA = "not recorded"
BLUE, GREY, RED, GREEN = "#1f5fa8", "#7f8c9a", "#c0392b", "#2e8b57"


def figure_file(name: str) -> str:
    """A figure's name among the report's files."""
    return f"{FIGURE_DIR}/{name}.png"


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


@dataclass
class Curves:
    """The predictions the figures are drawn from: the held-out rows scored by the version's model, and the
    nested-CV predictions (nested.csv; None for a version trained before they were kept)."""

    y: np.ndarray
    proba: np.ndarray
    nested: pd.DataFrame | None


# -- writing and reading -----------------------------------------------------------------------------------
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


# -- the numbers: metrics.json, printed one way -------------------------------------------------------------
def _fmt(value: Any, fmt: str) -> str:
    return format(value, fmt)


def _pointer(path: Sequence[str | int]) -> str:
    """The RFC 6901 JSON pointer of ``path``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _const(text: str) -> str:
    """A number that is a fact of the report's text, not a figure of this version (a year, "95%")."""
    return f"<span data-const>{html.escape(text)}</span>"


class Page:
    """metrics.json, and the one way its values are printed (HTML) or drawn (figure text)."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def get(self, *path: str | int) -> Any:
        node: Any = self.metrics
        for key in path:
            in_dict = isinstance(node, dict) and isinstance(key, str) and key in node
            in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
            if not (in_dict or in_list):
                return None
            node = node[key]
        return node

    def plain(self, *path: str | int, fmt: str = ".3f") -> str:
        """The value as a figure's text shows it (the same format as the HTML)."""
        value = self.get(*path)
        return NA if not _is_number(value) else _fmt(value, fmt)

    def number(self, *path: str | int, fmt: str = ".3f") -> str:
        """An HTML element printing the number at ``path``, naming where it comes from and its format."""
        value = self.get(*path)
        if not _is_number(value):
            return f'<span class="na">{NA}</span>'
        return (
            f'<span class="m" data-metric="{html.escape(_pointer(path))}" data-format="{html.escape(fmt)}">'
            f"{html.escape(_fmt(value, fmt))}</span>"
        )

    def text(self, *path: str | int, missing: str = NA) -> str:
        """An HTML element printing the string at ``path`` (escaped: it may come from a data source)."""
        value = self.get(*path)
        if not isinstance(value, str):
            return f'<span class="na">{html.escape(missing)}</span>'
        pointer = html.escape(_pointer(path))
        return f'<span class="m" data-metric="{pointer}" data-format="s">{html.escape(value)}</span>'

    def value(self, *path: str | int) -> str:
        """Any plain JSON value: a number (``d`` or ``g``), a string, true/false or none."""
        value = self.get(*path)
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "none"
        if isinstance(value, int):
            return self.number(*path, fmt="d")
        if isinstance(value, float):
            return self.number(*path, fmt="g")
        return self.text(*path)

    def interval(self, *path: str | int, fmt: str = ".3f") -> str:
        if not isinstance(self.get(*path), list):
            return "&ndash;"
        return (
            f'<span class="iv">{self.number(*path, 0, fmt=fmt)}&ndash;{self.number(*path, 1, fmt=fmt)}</span>'
        )

    @property
    def passed(self) -> bool:
        return bool(self.get("quality_gate", "passed"))

    @property
    def has_served(self) -> bool:
        return isinstance(self.get("reference", "served"), dict)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


# -- the figures ----------------------------------------------------------------------------------------
def render_figures(page: Page, curves: Curves) -> dict[str, bytes]:
    """Every figure as PNG bytes, drawn with matplotlib's Agg canvas (imported here, never at start-up)."""
    drawers: dict[str, Callable[[Page, Curves], Figure]] = {
        "roc": _roc_figure,
        "pr": _pr_figure,
        "threshold": _threshold_figure,
        "calibration": _calibration_figure,
        "confusion": _confusion_figure,
    }
    return {name: _png(drawers[name](page, curves)) for name in FIGURES}


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _fold_groups(nested: pd.DataFrame | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(y, proba) of each outer fold of each repeat that holds both classes."""
    if nested is None:
        return []
    groups = []
    for _, g in nested.groupby(["repeat", "fold"]):
        y = g["y"].to_numpy()
        if 0 < y.sum() < len(y):
            groups.append((y, g["proba"].to_numpy()))
    return groups


def _roc_on(grid: np.ndarray, y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, proba)
    return np.interp(grid, fpr, tpr)


def _pr_on(grid: np.ndarray, y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Interpolated precision (the best precision at a recall of at least r) at each recall r of ``grid``."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, proba)
    order = np.argsort(recall, kind="stable")
    recall, precision = recall[order], precision[order]
    best = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.minimum(np.searchsorted(recall, grid, side="left"), len(recall) - 1)
    return np.asarray(best[idx])


def _band(ax: Axes, grid: np.ndarray, curves_on_grid: list[np.ndarray], label: str) -> None:
    if curves_on_grid:
        stack = np.vstack(curves_on_grid)
        ax.fill_between(grid, stack.min(0), stack.max(0), color=GREY, alpha=0.3, lw=0, label=label)


def _zoom(
    ax: Axes, xlim: tuple[float, float], ylim: tuple[float, float], draw: Callable[[Axes], None]
) -> None:
    inset = ax.inset_axes((0.42, 0.1, 0.54, 0.5))
    draw(inset)
    inset.set_xlim(*xlim)
    inset.set_ylim(*ylim)
    inset.tick_params(labelsize=7)
    inset.grid(alpha=0.3)
    ax.indicate_inset_zoom(inset, edgecolor=GREY)


def _estimate(page: Page, name: str) -> tuple[float, float, float] | None:
    """(mean, low, high) of a nested estimate, or None."""
    est = page.get("nested", "metrics", name)
    if not isinstance(est, dict) or not _is_number(est.get("mean")) or not isinstance(est.get("ci95"), list):
        return None
    return float(est["mean"]), float(est["ci95"][0]), float(est["ci95"][1])


def _roc_figure(page: Page, curves: Curves) -> Figure:
    from sklearn.metrics import roc_curve

    fig = _new_figure(5.6, 5.4)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 201)
    folds = [_roc_on(grid, y, p) for y, p in _fold_groups(curves.nested)]
    fpr, tpr, _ = roc_curve(curves.y, curves.proba)
    recall, specificity = page.get("held_out", "recall"), page.get("held_out", "specificity")
    rec, spec = _estimate(page, "recall"), _estimate(page, "specificity")
    nested_auc = page.plain("nested", "metrics", "roc_auc", "mean")

    def draw(target: Axes, labels: bool = False) -> None:
        _band(target, grid, folds, "nested CV: range of the outer folds" if labels else "")
        target.plot(
            fpr,
            tpr,
            color=BLUE,
            lw=1.8,
            label=f"held-out (AUC {page.plain('held_out', 'roc_auc')})" if labels else None,
        )
        if _is_number(recall) and _is_number(specificity):
            target.plot(
                [1 - specificity],
                [recall],
                "o",
                color=RED,
                ms=8,
                zorder=5,
                label=f"operating point, threshold {page.plain('threshold', fmt='.4f')}" if labels else None,
            )
        if rec and spec:
            target.errorbar(
                [1 - spec[0]],
                [rec[0]],
                xerr=[[spec[2] - spec[0]], [spec[0] - spec[1]]],
                yerr=[[rec[0] - rec[1]], [rec[2] - rec[0]]],
                fmt="s",
                color="black",
                ms=5,
                capsize=3,
                zorder=6,
                label=f"nested CV estimate, 95% interval (AUC {nested_auc})" if labels else None,
            )

    draw(ax, labels=True)
    ax.plot([0, 1], [0, 1], ls=":", color=GREY, lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)", ylabel="recall")
    ax.set_title("ROC curve")
    ax.grid(alpha=0.3)
    _zoom(ax, (0.0, 0.2), (0.8, 1.005), draw)
    fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    return fig


def _pr_figure(page: Page, curves: Curves) -> Figure:
    from sklearn.metrics import precision_recall_curve

    fig = _new_figure(5.6, 5.4)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 201)
    folds = [_pr_on(grid, y, p) for y, p in _fold_groups(curves.nested)]
    precision, recall, _ = precision_recall_curve(curves.y, curves.proba)
    point = page.get("held_out", "recall"), page.get("held_out", "precision")
    rec, prec = _estimate(page, "recall"), _estimate(page, "precision")

    def draw(target: Axes, labels: bool = False) -> None:
        _band(target, grid, folds, "nested CV: range of the outer folds" if labels else "")
        target.step(recall, precision, where="post", color=BLUE, lw=1.8, label="held-out" if labels else None)
        if _is_number(point[0]) and _is_number(point[1]):
            target.plot(
                [point[0]],
                [point[1]],
                "o",
                color=RED,
                ms=8,
                zorder=5,
                label=f"operating point, threshold {page.plain('threshold', fmt='.4f')}" if labels else None,
            )
        if rec and prec:
            target.errorbar(
                [rec[0]],
                [prec[0]],
                xerr=[[rec[0] - rec[1]], [rec[2] - rec[0]]],
                yerr=[[prec[0] - prec[1]], [prec[2] - prec[0]]],
                fmt="s",
                color="black",
                ms=5,
                capsize=3,
                zorder=6,
                label="nested CV estimate, 95% interval" if labels else None,
            )

    draw(ax, labels=True)
    ax.set(xlim=(0, 1.005), ylim=(0, 1.01), xlabel="recall", ylabel="precision")
    ax.set_title("Precision-recall curve")
    ax.grid(alpha=0.3)
    _zoom(ax, (0.8, 1.005), (0.7, 1.005), draw)
    fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    return fig


def _sweep(y: np.ndarray, proba: np.ndarray, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Recall, precision and specificity of "malignant when ``proba >= t``" for each t of ``grid``."""
    pos, neg = np.sort(proba[y == 1]), np.sort(proba[y == 0])
    tp = len(pos) - np.searchsorted(pos, grid, side="left")
    fp = len(neg) - np.searchsorted(neg, grid, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "recall": tp / max(len(pos), 1),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan),
            "specificity": (len(neg) - fp) / max(len(neg), 1),
        }


def _threshold_figure(page: Page, curves: Curves) -> Figure:
    fig = _new_figure(7.2, 4.6)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 401)
    colours = {"recall": RED, "precision": BLUE, "specificity": GREEN}
    nested = curves.nested
    if nested is not None:
        for name, values in _sweep(nested["y"].to_numpy(), nested["proba"].to_numpy(), grid).items():
            ax.plot(grid, values, color=colours[name], lw=1.8, label=f"{name}, nested CV")
    for name, values in _sweep(curves.y, curves.proba, grid).items():
        ax.plot(grid, values, color=colours[name], lw=1, ls="--", label=f"{name}, held-out")
    target = page.get("params", "target_recall")
    if _is_number(target):
        ax.axhline(
            target,
            color="black",
            ls=":",
            lw=1.2,
            label=f"TARGET_RECALL {page.plain('params', 'target_recall', fmt='g')}",
        )
    threshold = page.get("threshold")
    if _is_number(threshold):
        ax.axvline(
            threshold, color="black", lw=1.2, label=f"chosen threshold {page.plain('threshold', fmt='.4f')}"
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold on P(malignant)", ylabel="rate")
    ax.set_title("Threshold sweep: malignant when P(malignant) >= threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig


def _calibration_figure(page: Page, curves: Curves) -> Figure:
    fig = _new_figure(9.6, 4.4)
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], ls=":", color=GREY, lw=1, label="perfect calibration")
    bins = page.get("reliability", "bins")
    shown = [
        (i, b)
        for i, b in enumerate(bins if isinstance(bins, list) else [])
        if isinstance(b, dict) and b.get("rows")
    ]
    if shown:
        xs = [b["mean_predicted"] for _, b in shown]
        ys = [b["observed"] for _, b in shown]
        most = max(b["rows"] for _, b in shown)
        sizes = [20 + 200 * np.sqrt(b["rows"] / most) for _, b in shown]
        left.plot(xs, ys, color=BLUE, lw=1.2)
        left.scatter(xs, ys, s=sizes, color=BLUE, zorder=3, label="nested CV, per bin (labelled: its rows)")
        for (i, _), x, y in zip(shown, xs, ys, strict=True):
            left.annotate(
                page.plain("reliability", "bins", i, "rows", fmt="d"),
                (x, y),
                textcoords="offset points",
                xytext=(6, -10),
                fontsize=7,
                color=GREY,
            )
    left.set(
        xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(malignant)", ylabel="observed malignant share"
    )
    left.set_title(
        f"Reliability: Brier {page.plain('nested', 'metrics', 'brier', 'mean', fmt='.4f')}, "
        f"ECE {page.plain('nested', 'metrics', 'ece', 'mean', fmt='.3f')} (nested CV)",
        fontsize=10,
    )
    left.grid(alpha=0.3)
    left.legend(loc="upper left", fontsize=8, frameon=False)
    if curves.nested is not None:
        y, proba, basis = curves.nested["y"].to_numpy(), curves.nested["proba"].to_numpy(), "nested CV"
    else:
        y, proba, basis = curves.y, curves.proba, "held-out"
    edges = np.linspace(0, 1, 21)
    right.hist(proba[y == 0], bins=edges, color=BLUE, alpha=0.55, label="benign")
    right.hist(proba[y == 1], bins=edges, color=RED, alpha=0.55, label="malignant")
    right.set_yscale("log")
    right.set(xlim=(0, 1), xlabel="predicted P(malignant)", ylabel="rows (log scale)")
    right.set_title(f"Predicted probabilities by true class ({basis})", fontsize=10)
    right.legend(loc="upper center", fontsize=8, frameon=False)
    return fig


def _matrix_panels(page: Page) -> list[tuple[str, tuple[str, ...]]]:
    panels = [("held-out rows", ("held_out",)), ("reference set, this version", ("reference", "candidate"))]
    if page.has_served:
        panels.append(("reference set, served model", ("reference", "served")))
    return panels


def _confusion_figure(page: Page, curves: Curves) -> Figure:
    panels = _matrix_panels(page)
    fig = _new_figure(3.4 * len(panels), 3.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, path) in zip(axes, panels, strict=True):
        cm = page.get(*path, "confusion_matrix") or {}
        cells = [["tn", "fp"], ["fn", "tp"]]
        counts = np.array([[cm.get(c, 0) for c in row] for row in cells], dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i, row in enumerate(cells):
            for j, cell in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{cell.upper()}\n{page.plain(*path, 'confusion_matrix', cell, fmt='d')}",
                    ha="center",
                    va="center",
                    fontsize=11,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
        ax.set_xticks([0, 1], ["benign", "malignant"])
        ax.set_yticks([0, 1], ["benign", "malignant"])
        rates = [f"{name} {page.plain(*path, name)}" for name in ("recall", "specificity", "precision")]
        ax.set_xlabel(f"predicted\n{rates[0]}, {rates[1]},\n{rates[2]}", fontsize=8)
        ax.set_ylabel("true class")
        ax.set_title(title, fontsize=10)
    return fig


# -- the page ---------------------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;
color:#1d2733;background:#fff;line-height:1.45;font-size:15px}
main{max-width:1180px;margin:0 auto;padding:0 24px 48px}
header.verdict{padding:18px 24px;color:#fff}
header.passed{background:#1e7a4c} header.rejected{background:#b3261e}
header h1{margin:0 0 6px;font-size:22px} header .status{font-size:20px;font-weight:700;margin:4px 0}
header ul{margin:6px 0 0 18px;padding:0} header li{margin:2px 0}
.research{background:#fff6e0;border-left:4px solid #d9822b;padding:8px 12px;margin:16px 0}
h2{border-bottom:2px solid #dfe5ec;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:10px 0;font-size:14px}
th,td{border:1px solid #dfe5ec;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f6f9} .ok{color:#1e7a4c} .failed{color:#b3261e}
.grid{display:flex;flex-wrap:wrap;gap:12px} figure{margin:8px 0}
figure img{max-width:100%;height:auto;border:1px solid #dfe5ec} figcaption{font-size:13px;color:#5b6775}
.na{color:#8a96a3;font-style:italic} .m{font-variant-numeric:tabular-nums} .iv{white-space:nowrap}
.notes li{color:#5b6775} nav a{margin-right:14px} code{background:#f3f6f9;padding:0 3px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px} dt{font-weight:600}
"""
RESEARCH_ONLY = (
    '<p class="research"><b>Research use only.</b> This model is decision support for research. It is not a '
    "medical device, has not been clinically validated, and must not be used to diagnose, treat or make "
    "decisions about any patient.</p>"
)
NAV = (
    '<nav><a href="#summary">Key figures</a><a href="#gate">Quality gate</a><a href="#curves">Curves</a>'
    '<a href="#calibration">Calibration</a><a href="#confusion">Confusion matrices</a>'
    '<a href="#card">Model card</a></nav>'
)
# (metrics.json name, label, format) of the figures shown for every evaluation
SUMMARY_ROWS = (
    ("recall", "recall (malignant caught)", ".3f"),
    ("precision", "precision", ".3f"),
    ("specificity", "specificity (benign cleared)", ".3f"),
    ("f1", "F1", ".3f"),
    ("accuracy", "accuracy", ".3f"),
    ("roc_auc", "ROC-AUC", ".3f"),
    ("brier", "Brier score", ".4f"),
    ("ece", "ECE", ".3f"),
)
PCT95 = _const("95%")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str, pngs: dict[str, bytes]) -> str:
    data = base64.b64encode(pngs[name]).decode()
    caption = html.escape(FIGURES[name])
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _na(text: str = NA) -> str:
    return f'<span class="na">{html.escape(text)}</span>'


def render_html(page: Page, pngs: dict[str, bytes]) -> str:
    """The whole report as one HTML document (figures embedded as PNG data)."""
    footer = (
        "<footer><p>Written by <code>etl/report.py</code> from this version's <code>metrics.json</code> "
        "(every number above), <code>holdout.csv</code> and <code>nested.csv</code> (the curves). Write it "
        f"again with <code>python -m etl report {page.text('model_version')}</code>.</p></footer>"
    )
    body = [
        _header(page),
        "<main>",
        RESEARCH_ONLY,
        NAV,
        _summary(page),
        _gate(page),
        _curves_section(page, pngs),
        _calibration_section(page, pngs),
        _confusion_section(page, pngs),
        _card(page),
        footer,
        "</main>",
    ]
    title = html.escape(str(page.get("model_version") or ""))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Evaluation report {title}</title><style>{STYLE}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _header(page: Page) -> str:
    t = page.text
    if page.passed:
        status = '<p class="status">PASSED the quality gate: this version may be served.</p>'
        why = ""
    else:
        status = '<p class="status">REJECTED by the quality gate: this version is not served.</p>'
        reasons = page.get("quality_gate", "reasons") or []
        items = "".join(f"<li>{t('quality_gate', 'reasons', i)}</li>" for i in range(len(reasons)))
        why = (
            f"<p>Why: the failed checks</p><ul>{items}</ul>"
            if items
            else "<p>Why: no verdict was recorded.</p>"
        )
    css = "passed" if page.passed else "rejected"
    return (
        f'<header class="verdict {css}"><h1>Evaluation report: model version {t("model_version")}</h1>'
        f"{status}{why}<p>Trained {t('trained_at')}, evaluated {t('evaluated_at')}.</p></header>"
    )


def _summary(page: Page) -> str:
    n = page.number
    rows = []
    for name, label, fmt in SUMMARY_ROWS:
        held = n("held_out", name, fmt=fmt)
        if page.get("held_out", "intervals", name):
            held += f" ({page.interval('held_out', 'intervals', name, fmt=fmt)})"
        rows.append(
            [
                label,
                n("nested", "metrics", name, "mean", fmt=fmt),
                n("nested", "metrics", name, "std", fmt=fmt),
                page.interval("nested", "metrics", name, "ci95", fmt=fmt),
                held,
                n("reference", "candidate", name, fmt=fmt),
            ]
        )
    header = [
        "metric",
        f"nested CV mean ({n('nested', 'rows', fmt='d')} rows, {n('nested', 'patients', fmt='d')} patients, "
        f"{n('nested', 'repeats', fmt='d')} x {n('nested', 'folds', fmt='d')} folds)",
        "std across outer folds",
        f"{PCT95} interval (bootstrap over patients)",
        f"held-out ({n('held_out', 'rows', fmt='d')} rows; Wilson {PCT95})",
        f"reference set ({n('reference', 'rows', fmt='d')} rows)",
    ]
    counts = []
    for key, label in (("missed_cancers", "missed cancers"), ("false_alarms", "false alarms")):
        base = ("nested", "counts", key)
        counts.append(
            [
                label,
                f"{n(*base, 'mean', fmt='.1f')} of {n(*base, 'of', fmt='d')}",
                n(*base, "rate", fmt=".1%"),
                page.interval(*base, "wilson95", fmt=".1%"),
            ]
        )
    return (
        '<section id="summary"><h2>Key figures</h2><p>The gate decides on the nested cross-validation: '
        "the whole training procedure run inside each training part of repeated, patient-grouped outer folds "
        "over every patient. The held-out rows are few and decide nothing; the reference set is the "
        "operator's trusted rows, which no version trains on. The operating point: malignant when "
        "P(malignant) &ge; "
        f"{n('threshold', fmt='.4f')}.</p>"
        + _table(header, rows)
        + _table(["nested CV, per repeat", "rows", "rate", f"Wilson {PCT95} interval"], counts)
        + "</section>"
    )


def _check_format(name: str) -> str:
    if name.endswith("_vs_served"):
        return ".3g"  # a p-value
    if name == "agreement_with_served":
        return ".0f"  # a count of rows
    return ".4f"


def _gate(page: Page) -> str:
    n, t = page.number, page.text
    rows = []
    for i, check in enumerate(page.get("quality_gate", "checks") or []):
        base = ("quality_gate", "checks", i)
        fmt = _check_format(str(check.get("name", "")))
        rows.append(
            [
                t(*base, "name"),
                n(*base, "value", fmt=fmt),
                page.interval(*base, "interval", fmt=".4f"),
                f'<span class="iv">{t(*base, "comparator")} {n(*base, "limit", fmt=fmt)}</span>',
                '<b class="ok">passed</b>' if check.get("passed") else '<b class="failed">FAILED</b>',
                t(*base, "basis"),
                t(*base, "detail", missing=""),
            ]
        )
    table = _table(["check", "value", f"{PCT95} interval", "limit", "result", "rests on", "detail"], rows)
    notes = page.get("quality_gate", "notes") or []
    notes_html = (
        '<p>Notes (they decide nothing):</p><ul class="notes">'
        + "".join(f"<li>{t('quality_gate', 'notes', i)}</li>" for i in range(len(notes)))
        + "</ul>"
        if notes
        else ""
    )
    verdict = "passed every check" if page.passed else "failed: see the checks marked FAILED"
    return (
        f'<section id="gate"><h2>Quality gate</h2><p>The verdict: {verdict}. A value passes when it stands '
        "to its limit as the comparator says; p-values are exact one-sided McNemar tests against the served "
        f"model on the same reference rows.</p>{table}{notes_html}{_versus_served(page)}</section>"
    )


def _versus_served(page: Page) -> str:
    n = page.number
    if not page.has_served:
        return (
            "<h3>Against the served model</h3><p>No other model was served when this version was evaluated: "
            "there was nothing to compare it with on the reference set.</p>"
        )
    rows = [
        [
            label,
            n("reference", "candidate", name, fmt=fmt),
            n("reference", "served", name, fmt=fmt),
            n("reference", "delta_vs_served", name, fmt="+" + fmt),
        ]
        for name, label, fmt in SUMMARY_ROWS
        if name != "f1"
    ]
    p = ("reference", "paired")
    paired = [
        ["cancers missed only by this version", n(*p, "missed_only_by_candidate", fmt="d")],
        ["cancers missed only by the served model", n(*p, "missed_only_by_served", fmt="d")],
        ["false alarms only by this version", n(*p, "alarms_only_by_candidate", fmt="d")],
        ["false alarms only by the served model", n(*p, "alarms_only_by_served", fmt="d")],
        [f"rows on which the two disagree (of {n(*p, 'rows', fmt='d')})", n(*p, "disagreements", fmt="d")],
        [
            "disagreement between this version's own nested-CV models (honest noise)",
            n(*p, "noise_rate", fmt=".1%"),
        ],
    ]
    return (
        f"<h3>Against the served model {page.text('reference', 'served', 'version')}</h3><p>Both models "
        f"on the same {n('reference', 'rows', fmt='d')} reference rows, which neither trained on; the "
        "difference is this version's figure minus the served model's.</p>"
        + _table(["on the reference set", "this version", "served model", "difference"], rows)
        + _table(["paired on the same rows", "count"], paired)
    )


def _curves_section(page: Page, pngs: dict[str, bytes]) -> str:
    n = page.number
    return (
        '<section id="curves"><h2>Curves</h2><p>Solid: the held-out rows scored by this version. Grey band: '
        "the range of the nested-CV outer folds' curves (each fold scored by a procedure that never saw its "
        "patients). Red dot: the operating point at the stored threshold on the held-out rows; black square: "
        f"the nested-CV estimate with its {PCT95} interval.</p>"
        f'<div class="grid">{_img("roc", pngs)}{_img("pr", pngs)}</div>{_img("threshold", pngs)}'
        "<p>The threshold is the highest one whose out-of-fold recall reaches TARGET_RECALL "
        f"{n('params', 'target_recall', fmt='g')} on the training rows (the held-out rows chose nothing): "
        f"{n('threshold', fmt='.4f')}.</p></section>"
    )


def _calibration_section(page: Page, pngs: dict[str, bytes]) -> str:
    n, t = page.number, page.text
    bins = page.get("reliability", "bins")
    rows = []
    for i in range(len(bins) if isinstance(bins, list) else 0):
        b = ("reliability", "bins", i)
        rows.append(
            [
                f"{n(*b, 'lower', fmt='.1f')}&ndash;{n(*b, 'upper', fmt='.1f')}",
                n(*b, "rows", fmt="d"),
                n(*b, "mean_predicted", fmt=".3f"),
                n(*b, "observed", fmt=".3f"),
            ]
        )
    reliability = (
        _table(["predicted P(malignant)", "rows", "mean predicted", "observed malignant share"], rows)
        if rows
        else f"<p>{_na('No nested-CV predictions were recorded for this version.')}</p>"
    )
    methods = [
        [
            method,
            n("nested", "calibration", "methods", method, "brier", fmt=".4f"),
            n("nested", "calibration", "methods", method, "ece", fmt=".3f"),
            n("nested", "calibration", "methods", method, "missed_cancers", fmt=".1f"),
        ]
        for method in ("isotonic", "sigmoid", "none")
    ]
    return (
        f'<section id="calibration"><h2>Calibration</h2>{_img("calibration", pngs)}'
        f"<p>Brier score {n('nested', 'metrics', 'brier', 'mean', fmt='.4f')} and ECE "
        f"{n('nested', 'metrics', 'ece', 'mean', fmt='.3f')} (nested CV, mean over repeats; held-out: "
        f"{n('held_out', 'brier', fmt='.4f')} and {n('held_out', 'ece', fmt='.3f')}). Reliability of the "
        f"{n('reliability', 'rows', fmt='d')} nested-CV predictions ({t('reliability', 'basis')}) in the "
        "ECE's bins; a bin with few rows says little:</p>"
        f"{reliability}<p>Calibration {t('calibration')} (setting {t('nested', 'calibration', 'setting')}): "
        "the method with the lowest nested Brier score among those that miss no more cancers than none.</p>"
        + _table(["method", "nested Brier", "ECE", "missed cancers per repeat"], methods)
        + "</section>"
    )


def _confusion_section(page: Page, pngs: dict[str, bytes]) -> str:
    n = page.number
    rows = [
        [
            title,
            *(n(*path, "confusion_matrix", cell, fmt="d") for cell in ("tp", "fn", "fp", "tn")),
            *(n(*path, name) for name in ("recall", "specificity", "precision", "accuracy")),
        ]
        for title, path in _matrix_panels(page)
    ]
    header = [
        "rows",
        "malignant caught (TP)",
        "missed cancers (FN)",
        "false alarms (FP)",
        "benign cleared (TN)",
        "recall",
        "specificity",
        "precision",
        "accuracy",
    ]
    return (
        f'<section id="confusion"><h2>Confusion matrices</h2>{_img("confusion", pngs)}'
        f"{_table(header, rows)}</section>"
    )


LIMITATIONS = (
    "<li>The calibration rests on few rows between the extremes: read a probability with its bin's row "
    "count in the reliability table in mind.</li>"
    "<li>The data are old and from one place: the Wisconsin Breast Cancer (Original) data, fine-needle "
    f"aspirates collected {_const('1989')}&ndash;{_const('1991')} at one hospital (University of Wisconsin "
    "Hospitals, Madison), scored by one group. Scoring practice, population and the share of malignant "
    "tumours elsewhere or today may differ; nothing here was validated on other data.</li>"
    "<li>The held-out rows are few: their figures are noisy by construction and decide nothing.</li>"
    "<li>The nested estimates and the reference set come from the same source as the training data: they "
    "measure how the procedure generalises within it, not to another clinic.</li>"
)
INTENDED_USE = (
    "<p>Decision support for research on breast-tumour cytology: the probability that a tumour is malignant "
    "from nine scores a cytologist assigns. Not a medical device; not clinically validated; it must not be "
    "used to diagnose, treat or make decisions about any patient.</p>"
)


def _card(page: Page) -> str:
    n, t = page.number, page.text
    r, ref = "rows", "reference"
    data = (
        f"<dl><dt>source</dt><dd>{t('data_source')}</dd><dt>sha256</dt><dd><code>{t('data_sha256')}</code></dd>"
        f"<dt>rows</dt><dd>{n(r, 'raw', fmt='d')} read; {n(r, 'missing_dropped', fmt='d')} dropped for a "
        f"missing value (never guessed); {n(r, 'duplicates_dropped', fmt='d')} dropped as exact duplicates; "
        f"{n(r, 'clean', fmt='d')} clean, of which {n('class_counts', 'data', 'benign', fmt='d')} benign and "
        f"{n('class_counts', 'data', 'malignant', fmt='d')} malignant</dd>"
        f"<dt>use</dt><dd>{n(r, 'reference_excluded', fmt='d')} rows of the reference set's patients set "
        f"aside (never trained on); {n(r, 'train', fmt='d')} training and {n(r, 'test', fmt='d')} held-out "
        "rows</dd><dt>patients</dt><dd>grouped by <code>Id</code>: no patient is on both sides of the split "
        f"or of any fold; {n('nested', 'patients', fmt='d')} patients in the nested CV</dd>"
        f"<dt>reference set</dt><dd>{n(ref, 'rows', fmt='d')} rows ({n(ref, 'malignant', fmt='d')} "
        f"malignant, {n(ref, 'benign', fmt='d')} benign, {n(ref, 'patients', fmt='d')} patients), "
        f"{t(ref, 'source')}, sha256 <code>{t(ref, 'sha256')}</code></dd></dl>"
    )
    classifier = page.get("params", "classifier")
    params = (
        ", ".join(f"{html.escape(k)}={page.value('params', 'classifier', k)}" for k in sorted(classifier))
        if isinstance(classifier, dict)
        else _na()
    )
    features = page.get("params", "features")
    feature_list = (
        ", ".join(t("params", "features", i) for i in range(len(features)))
        if isinstance(features, list)
        else _na()
    )
    model = (
        f"<dl><dt>model</dt><dd>{t('params', 'model')} on the nine cytology scores: {feature_list}</dd>"
        f"<dt>classifier parameters</dt><dd>{params}</dd>"
        f"<dt>calibration</dt><dd>{t('calibration')}, fitted on out-of-fold decision values "
        f"({n('params', 'inner_folds', fmt='d')} patient-grouped folds)</dd>"
        f"<dt>threshold</dt><dd>{n('threshold', fmt='.4f')}, for TARGET_RECALL "
        f"{n('params', 'target_recall', fmt='g')}</dd>"
        f"<dt>seed</dt><dd>{n('params', 'seed', fmt='d')}</dd></dl>"
    )
    versions = page.get("versions")
    libraries = (
        ", ".join(f"{html.escape(k)} {t('versions', k)}" for k in sorted(versions))
        if isinstance(versions, dict)
        else _na()
    )
    parent = (
        t("lineage", "parent_version")
        if isinstance(page.get("lineage", "parent_version"), str)
        else "none: no model was served when this version was trained"
    )
    return (
        f'<section id="card"><h2>Model card</h2><h3>Intended use</h3>{INTENDED_USE}'
        f"<h3>Data</h3>{data}<h3>Model</h3>{model}<h3>Limitations</h3><ul>{LIMITATIONS}</ul>"
        f"<h3>Libraries</h3><p>{libraries}</p>"
        f"<h3>Lineage</h3><dl><dt>version</dt><dd>{t('model_version')}</dd>"
        f"<dt>parent (served when it was trained)</dt><dd>{parent}</dd>"
        f"<dt>trained</dt><dd>{t('trained_at')}</dd><dt>evaluated</dt><dd>{t('evaluated_at')}</dd></dl></section>"
    )
