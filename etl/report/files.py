"""What a report consists of: ``report.html``, the figures' names and their files, and the policy the page is
served under. The writer, the page and the service's routes all name the files from here."""

from __future__ import annotations

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


def figure_file(name: str) -> str:
    """A figure's name among the report's files."""
    return f"{FIGURE_DIR}/{name}.png"
