"""report.html: the whole report as one self-contained HTML document (styles inline, figures embedded as PNG
data, no script, nothing from another host), section by section; the model card is in card.py."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

from etl.report.card import model_card
from etl.report.files import CONTENT_SECURITY_POLICY, FIGURES
from etl.report.page import Page, const, matrix_panels, na

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
PCT95 = const("95%")


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


def render_html(page: Page, pngs: dict[str, bytes]) -> str:
    """The whole report as one HTML document (figures embedded as PNG data)."""
    footer = (
        "<footer><p>Written by <code>etl/report/</code> from this version's <code>metrics.json</code> "
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
        model_card(page),
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
        else f"<p>{na('No nested-CV predictions were recorded for this version.')}</p>"
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
        for title, path in matrix_panels(page)
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
