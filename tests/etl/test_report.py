"""etl.report: the evaluation report written at evaluation, on real versions trained on the bundled data: a
version evaluated alone, a challenger judged beside it, and a version trained on flipped labels (rejected).

Every number the report prints is checked against metrics.json; each figure is a real PNG; a rejected report
says why. (That it renders offline and is not blank is tests/integration/test_report_browser.py.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import etl.judging
from etl.errors import ArtifactIntegrityError, ModelNotFoundError, ReportNotFoundError
from etl.evaluate import expected_calibration_error, reliability_bins
from etl.pipeline import evaluate_version, open_registry, train_version
from etl.registry import Registry
from etl.report import FIGURES, REPORT_FILE, Page, figure_file, read_report, render_html, write_report
from etl.settings import Settings
from tests.conftest import BUNDLED_CSV
from tests.etl.conftest import served_copy, trained_copy
from tests.pipeline_support import QUICK_NESTED, make_settings
from tests.registry_support import report_path, report_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# numbers in the report's own words (not figures of a version): each is marked data-const
CONSTANTS = {"95%", "1989", "1991"}
# a number in running text: a digit that does not end a name (F1, sha256, l1_ratio are names)
NUMBER = re.compile(r"(?<![A-Za-z_\d])\d")


@dataclass
class Versions:
    settings: Settings
    registry: Registry
    alone: str  # evaluated with nothing served, promoted
    challenger: str  # judged beside the served one, not promoted
    rejected: str  # flipped labels, beside the served one

    def metrics(self, version: str) -> dict[str, Any]:
        metrics = self.registry.read_metrics(version)
        assert metrics is not None
        return metrics

    def html(self, version: str) -> str:
        return report_path(self.registry.root, version).read_text()  # the stored file, as people open it


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, served_template) -> Versions:
    base = tmp_path_factory.mktemp("report")
    settings, first = served_copy(served_template, base)  # evaluated alone and promoted
    registry = open_registry(settings)
    assert registry.served_version() == first
    reseeded = make_settings(base, random_seed=7, **QUICK_NESTED)
    challenger = train_version(reseeded, registry).version
    evaluate_version(reseeded, registry, challenger, promote=False)
    frame = pd.read_csv(BUNDLED_CSV, dtype=str)
    frame["Class"] = 1 - frame["Class"].astype(int)
    flipped = settings.data_dir / "flipped.csv"
    flipped.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(flipped, index=False)
    rejected = train_version(make_settings(base, **QUICK_NESTED), registry, str(flipped)).version
    assert not evaluate_version(settings, registry, rejected).gate.passed
    return Versions(settings, registry, first, challenger, rejected)


# -- reading the page as a person sees it -------------------------------------------------------------------
@dataclass
class Printed:
    """What report.html shows in its body: each data-metric element, each data-const, the rest of the text."""

    metrics: list[tuple[str, str, str]] = field(default_factory=list)  # (pointer, format, text)
    consts: list[str] = field(default_factory=list)
    loose: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # img src


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = Printed()
        self._body = False
        self._open: tuple[str, dict[str, str | None], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "body":
            self._body = True
        if tag == "img":
            self.out.images.append(named.get("src") or "")
        if "data-metric" in named or "data-const" in named:
            assert self._open is None, "a number element inside another"
            self._open = (tag, named, [])

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag == self._open[0]:
            _, named, parts = self._open
            text = "".join(parts)
            if "data-metric" in named:
                self.out.metrics.append((str(named["data-metric"]), str(named["data-format"]), text))
            else:
                self.out.consts.append(text)
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2].append(data)
        elif self._body:
            self.out.loose.append(data)


def printed(html: str) -> Printed:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.out


def resolve(document: Any, pointer: str) -> Any:
    """RFC 6901: the value ``pointer`` names in ``document``."""
    node = document
    for raw in pointer.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


# -- the numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["alone", "challenger", "rejected"])
def test_report_every_printed_number_equals_metrics_json(versions: Versions, which: str):
    version = getattr(versions, which)
    metrics = versions.metrics(version)
    shown = printed(versions.html(version))
    assert len(shown.metrics) > 150
    for pointer, fmt, text in shown.metrics:
        value = resolve(metrics, pointer)
        expected = value if fmt == "s" else format(value, fmt)
        assert text == expected, f"{pointer}: printed {text!r}, metrics.json has {value!r} ({fmt})"
    # nothing else on the page is a number: every digit is inside an element naming its source
    loose = "".join(shown.loose)
    assert not NUMBER.search(loose), [
        loose[max(0, m.start() - 30) : m.end() + 30] for m in NUMBER.finditer(loose)
    ]
    assert set(shown.consts) <= CONSTANTS
    pointers = {p for p, _, _ in shown.metrics}
    for name in ("recall", "precision", "specificity", "roc_auc", "brier", "ece"):
        assert {
            f"/nested/metrics/{name}/mean",
            f"/held_out/{name}",
            f"/reference/candidate/{name}",
        } <= pointers
    assert {
        "/threshold",
        "/params/target_recall",
        "/data_sha256",
        "/model_version",
        "/rows/missing_dropped",
    } <= (pointers)
    assert {
        f"/quality_gate/checks/{i}/value" for i in range(len(metrics["quality_gate"]["checks"]))
    } <= pointers
    assert {f"/reliability/bins/{i}/rows" for i in range(10)} <= pointers


def test_report_each_table_row_prints_the_metric_it_names(versions: Versions):
    """The key-figures table: the row labelled "precision" prints precision, each column its figure."""
    html = versions.html(versions.challenger)
    section = html[html.index('<section id="summary">') : html.index("</section>")]
    for name, label, held_interval in (
        ("recall", "recall (malignant caught)", True),
        ("precision", "precision", True),
        ("ece", "ECE", False),
    ):
        row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", section)
        assert row, label
        nested = f"/nested/metrics/{name}"
        held = [f"/held_out/{name}"]
        if held_interval:
            held += [f"/held_out/intervals/{name}/0", f"/held_out/intervals/{name}/1"]
        assert re.findall(r'data-metric="([^"]+)"', row.group(1)) == [
            f"{nested}/mean",
            f"{nested}/std",
            f"{nested}/ci95/0",
            f"{nested}/ci95/1",
            *held,
            f"/reference/candidate/{name}",
        ]


def test_report_challenger_shows_the_served_model_beside_it(versions: Versions):
    metrics = versions.metrics(versions.challenger)
    ref = metrics["reference"]
    assert ref["served"]["version"] == versions.alone
    for name, delta in ref["delta_vs_served"].items():
        assert delta == pytest.approx(ref["candidate"][name] - ref["served"][name], abs=1e-12)
    shown = printed(versions.html(versions.challenger))
    pointers = {p for p, _, _ in shown.metrics}
    assert "/reference/served/version" in pointers
    assert {f"/reference/delta_vs_served/{n}" for n in ("recall", "precision", "roc_auc")} <= pointers
    assert {f"/reference/paired/{n}" for n in ("missed_only_by_candidate", "disagreements")} <= pointers
    assert ("/reference/served/version", "s", versions.alone) in shown.metrics
    alone = versions.html(versions.alone)
    assert "No other model was served when this version was evaluated" in alone


def test_report_rejected_version_says_at_the_top_why(versions: Versions):
    metrics = versions.metrics(versions.rejected)
    reasons = metrics["quality_gate"]["reasons"]
    assert reasons
    html = versions.html(versions.rejected)
    header = html[html.index("<header") : html.index("</header>")]
    assert 'class="verdict rejected"' in header
    assert "REJECTED by the quality gate: this version is not served." in header
    shown = printed(header + "</body>")
    listed = [text for pointer, _, text in shown.metrics if pointer.startswith("/quality_gate/reasons/")]
    assert listed == reasons
    assert any(r.startswith("reference_roc_auc") for r in listed)
    assert html.index("REJECTED") < html.index('<section id="summary">')


def test_report_passed_version_says_so_and_no_rejection(versions: Versions):
    html = versions.html(versions.alone)
    assert 'class="verdict passed"' in html and "PASSED the quality gate" in html
    assert "REJECTED" not in html


def test_report_is_self_contained(versions: Versions):
    html = versions.html(versions.rejected)
    lowered = html.lower()
    for forbidden in (
        "<script",
        "<link",
        "@import",
        "url(",
        "<iframe",
        "<object",
        "<embed",
        "http://",
        "https://",
    ):
        assert forbidden not in lowered, forbidden
    sources = re.findall(r'\s(?:src|href)="([^"]*)"', html)
    outside = [s for s in sources if not s.startswith(("data:image/png;base64,", "#"))]
    assert outside == [] and len(sources) == len(FIGURES) + 6  # the figures and the six section links
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


# -- the figures ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FIGURES))
def test_report_figure_is_a_valid_png_recorded_and_embedded(versions: Versions, name: str):
    from matplotlib.image import imread

    path = report_path(versions.registry.root, versions.challenger, figure_file(name))
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert width >= 500 and height >= 300
    assert float(np.std(pixels[..., :3])) > 0.05  # drawn, not one colour
    record = report_record(versions.registry.root, versions.challenger)
    assert record is not None and record["files"][figure_file(name)] == hashlib.sha256(data).hexdigest()
    html = report_path(versions.registry.root, versions.challenger).read_bytes()
    assert record["files"][REPORT_FILE] == hashlib.sha256(html).hexdigest()
    embedded = printed(versions.html(versions.challenger)).images
    assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in embedded


def test_report_rejected_version_has_every_figure(versions: Versions):
    for name in FIGURES:
        assert read_report(versions.registry, versions.rejected, name).startswith(PNG_MAGIC)


# -- writing, reading, failing --------------------------------------------------------------------------
def test_read_report_unknown_version_is_model_not_found(versions: Versions):
    with pytest.raises(ModelNotFoundError):
        read_report(versions.registry, "20990101T000000Z-00000000")
    with pytest.raises(ModelNotFoundError):
        read_report(versions.registry, "../../etc")


@pytest.mark.parametrize("figure", ["nope", "../report", "report", "roc.png", ""])
def test_read_report_unknown_figure_is_refused_without_echo(versions: Versions, figure: str):
    with pytest.raises(ReportNotFoundError) as info:
        read_report(versions.registry, versions.alone, figure)
    assert (
        str(info.value)
        == "no such figure: the report's figures are roc, pr, threshold, calibration, confusion"
    )


def test_read_report_not_evaluated_version_says_so(tmp_path: Path, trained_template):
    settings, trained = trained_copy(trained_template, tmp_path)
    registry = open_registry(settings)
    with pytest.raises(ReportNotFoundError, match="has not been evaluated yet"):
        read_report(registry, trained.version)
    with pytest.raises(ReportNotFoundError, match="has not been evaluated yet"):
        read_report(registry, trained.version, "roc")


def test_read_report_changed_file_fails_its_integrity_check(tmp_path: Path, versions: Versions):
    registry = versions.registry
    stored = report_path(registry.root, versions.rejected)  # the store's object, changed behind its back
    original = stored.read_bytes()
    try:
        stored.write_bytes(original.replace(b"REJECTED", b"PASSED!!"))
        with pytest.raises(
            ArtifactIntegrityError, match=r"report\.html of version \S+ fails its integrity check"
        ):
            read_report(registry, versions.rejected)
    finally:
        stored.write_bytes(original)
    assert read_report(registry, versions.rejected) == original


def test_write_report_again_gives_the_same_figures(versions: Versions):
    registry = versions.registry
    before = {name: read_report(registry, versions.challenger, name) for name in FIGURES}
    result = write_report(registry, versions.challenger)
    assert set(result.files) == {REPORT_FILE, *(figure_file(n) for n in FIGURES)}
    assert {name: read_report(registry, versions.challenger, name) for name in FIGURES} == before


def test_render_html_escapes_what_a_data_source_wrote(versions: Versions):
    metrics = json.loads(json.dumps(versions.metrics(versions.rejected)))
    evil = '<script>alert(1)</script><img src="http://evil.example/x.png">'
    metrics["data_source"] = evil
    metrics["quality_gate"]["reasons"][0] = evil
    metrics["quality_gate"]["notes"] = [evil]
    html = render_html(Page(metrics), dict.fromkeys(FIGURES, PNG_MAGIC))
    assert "<script" not in html and 'evil.example/x.png">' not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3


def test_render_html_older_metrics_without_new_fields_say_not_recorded(versions: Versions):
    metrics = versions.metrics(versions.alone)
    for key in ("params", "reliability", "lineage", "class_counts"):
        metrics.pop(key)
    html = render_html(Page(metrics), dict.fromkeys(FIGURES, PNG_MAGIC))
    assert "not recorded" in html and "No nested-CV predictions were recorded" in html
    shown = printed(html)
    assert not NUMBER.search("".join(shown.loose))


def test_evaluate_report_failure_keeps_the_verdict_and_promotes(
    tmp_path: Path, trained_template, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    settings, trained = trained_copy(trained_template, tmp_path)
    registry = open_registry(settings)

    def broken(registry: Registry, version: str) -> None:
        raise RuntimeError("no fonts here")

    monkeypatch.setattr(etl.judging, "write_report", broken)
    with caplog.at_level(logging.ERROR, logger="etl.judging"):
        summary = evaluate_version(settings, registry, trained.version)
    assert summary.gate.passed and summary.promoted
    assert registry.read_metrics(trained.version) is not None
    assert f"python -m etl report {trained.version}" in caplog.text
    with pytest.raises(ReportNotFoundError, match=f"write it with `python -m etl report {trained.version}`"):
        read_report(registry, trained.version)


# -- the reliability table in metrics.json ----------------------------------------------------------------
def test_reliability_bins_hand_values_and_agree_with_ece():
    y = np.array([0, 0, 1, 1, 1, 0])
    proba = np.array([0.05, 0.05, 0.15, 0.95, 1.0, 0.95])
    bins = reliability_bins(y, proba)
    assert len(bins) == 10 and [b["rows"] for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert bins[0] == {"lower": 0.0, "upper": 0.1, "rows": 2, "mean_predicted": 0.05, "observed": 0.0}
    assert bins[2]["mean_predicted"] is None and bins[2]["observed"] is None
    assert bins[9]["mean_predicted"] == pytest.approx((0.95 + 1.0 + 0.95) / 3)
    assert bins[9]["observed"] == pytest.approx(2 / 3)
    ece = sum(b["rows"] / 6 * abs(b["mean_predicted"] - b["observed"]) for b in bins if b["rows"])
    assert ece == pytest.approx(expected_calibration_error(y, proba))


def test_evaluate_records_the_reliability_of_the_nested_predictions(versions: Versions):
    metrics = versions.metrics(versions.alone)
    nested = versions.registry.load_nested(versions.alone)
    assert nested is not None
    table = metrics["reliability"]
    assert table["rows"] == len(nested) == metrics["nested"]["rows"] * metrics["nested"]["repeats"]
    assert sum(b["rows"] for b in table["bins"]) == len(nested)
    pooled_ece = metrics["nested"]["calibration"]["methods"][metrics["calibration"]]["ece"]
    rebuilt = sum(
        b["rows"] / len(nested) * abs(b["mean_predicted"] - b["observed"]) for b in table["bins"] if b["rows"]
    )
    assert rebuilt == pytest.approx(pooled_ece)
    assert metrics["params"]["target_recall"] == versions.settings.target_recall
    assert metrics["lineage"] == {"parent_version": None}
