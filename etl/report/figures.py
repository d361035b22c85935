"""The report's figures, drawn with matplotlib's Agg canvas from the version's predictions (``Curves``) and
its metrics (``Page``), each returned as PNG bytes.

matplotlib is imported only inside the functions that draw (and sklearn inside those that compute a curve), so
importing the report, as the service does to serve one, never loads a plotting library.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from etl.report.files import FIGURES
from etl.report.page import Page, is_number, matrix_panels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
BLUE, GREY, RED, GREEN = "#1f5fa8", "#7f8c9a", "#c0392b", "#2e8b57"


@dataclass
class Curves:
    """The predictions the figures are drawn from: the held-out rows scored by the version's model, and the
    nested-CV predictions (nested.csv; None for a version trained before they were kept)."""

    y: np.ndarray
    proba: np.ndarray
    nested: pd.DataFrame | None


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
    if not isinstance(est, dict) or not is_number(est.get("mean")) or not isinstance(est.get("ci95"), list):
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
        if is_number(recall) and is_number(specificity):
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
        if is_number(point[0]) and is_number(point[1]):
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
    if is_number(target):
        ax.axhline(
            target,
            color="black",
            ls=":",
            lw=1.2,
            label=f"TARGET_RECALL {page.plain('params', 'target_recall', fmt='g')}",
        )
    threshold = page.get("threshold")
    if is_number(threshold):
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


def _confusion_figure(page: Page, curves: Curves) -> Figure:
    panels = matrix_panels(page)
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
