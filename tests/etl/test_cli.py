"""``python -m etl``: each subcommand with its state in tmp dirs; exit codes, output, log lines.

One full run is a real ``python -m etl`` subprocess; the other commands call ``etl.__main__.main(argv)`` in
this process, with the environment and working folder a subprocess would have.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from etl.pipeline import open_registry
from tests.conftest import BUNDLED_SHA256, free_port
from tests.etl.conftest import etl_subprocess
from tests.in_process import Ran
from tests.pipeline_support import QUICK_NESTED, copy_tree, make_settings, unevaluated_copy
from tests.registry_support import report_path, report_record, served_of


def _json(ran: Ran) -> Any:
    assert ran.stdout, ran.stderr
    return json.loads(ran.stdout)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ran]:
    """One full ``python -m etl run`` subprocess with DATA_URL empty (the bundled copy); tests copy its
    workdir."""
    workdir = tmp_path_factory.mktemp("cli-template")
    return workdir, etl_subprocess(workdir, "run", DATA_URL="")


@pytest.fixture
def workdir(ran, tmp_path: Path) -> Path:
    template, proc = ran
    assert proc.returncode == 0, proc.stderr
    return copy_tree(template, tmp_path / "w")


def _served(workdir: Path) -> str | None:
    return served_of(workdir / "results")[0]


def test_cli_run_trains_evaluates_promotes_and_backs_up(ran):
    template, proc = ran
    assert proc.returncode == 0, proc.stderr
    out = _json(proc)
    version = out["version"]
    assert out["promoted"] is True
    rows = out["rows"]
    assert rows["raw"] == 699 and rows["train"] + rows["test"] + rows["reference_excluded"] == rows["clean"]
    assert out["metrics"]["recall"] >= 0.95 and out["metrics"]["accuracy"] >= 0.95
    assert out["nested"]["recall"] >= 0.95 and out["unchanged"] is False
    assert out["drive"]["status"] == "skipped"
    backup = Path(out["backup_dir"])
    assert backup.parent == template / "upload"
    assert sorted(p.name for p in backup.iterdir()) == ["metrics.json", "model.joblib", "report.html"]
    assert _served(template) == version
    vdir = template / "results" / "models" / version
    assert (backup / "model.joblib").read_bytes() == (vdir / "model.joblib").read_bytes()
    assert (backup / "report.html").read_bytes() == report_path(template / "results", version).read_bytes()
    assert (template / "results" / "model.joblib").read_bytes() == (vdir / "model.joblib").read_bytes()
    assert "train: version" in proc.stderr and "evaluate: version" in proc.stderr  # steps log what they did


def test_cli_models_lists_versions_with_status(workdir: Path, etl_cli):
    proc = etl_cli(workdir, "models")
    assert proc.returncode == 0, proc.stderr
    out = _json(proc)
    served = _served(workdir)
    assert out["served_version"] == served
    assert [(m["version"], m["status"], m["served"]) for m in out["models"]] == [(served, "passed", True)]
    assert out["models"][0]["metrics"]["recall"] >= 0.95


def test_cli_models_empty_registry(tmp_path: Path, etl_cli):
    proc = etl_cli(tmp_path, "models")
    assert proc.returncode == 0, proc.stderr
    assert _json(proc) == {"served_version": None, "epoch": 0, "models": []}


def test_cli_evaluate_without_promote_judges_only(workdir: Path, etl_cli):
    served = _served(workdir)
    proc = etl_cli(workdir, "evaluate", "--no-promote")
    assert proc.returncode == 0, proc.stderr
    out = _json(proc)
    assert out["version"] == served and out["gate"]["passed"] is True and out["promoted"] is False


def test_cli_evaluate_gate_failure_exits_3(workdir: Path, etl_cli):
    served = _served(workdir)
    proc = etl_cli(workdir, "evaluate", served, "--no-promote", GATE_MIN_RECALL="1.0")
    assert proc.returncode == 3, proc.stderr
    out = _json(proc)
    assert out["gate"]["passed"] is False and out["promoted"] is False
    assert any(r.startswith("recall =") for r in out["gate"]["reasons"])


def test_cli_train_then_rollback(workdir: Path, etl_cli):
    v1 = _served(workdir)
    unchanged = etl_cli(workdir, "train")
    assert unchanged.returncode == 0 and _json(unchanged)["version"] == v1 and _json(unchanged)["unchanged"]
    quick = {name.upper(): str(value) for name, value in QUICK_NESTED.items()}  # its figures do not matter
    trained = etl_cli(workdir, "train", "--force", **quick)
    assert trained.returncode == 0, trained.stderr
    v2 = _json(trained)["version"]
    assert v2 > v1 and _served(workdir) == v1  # training alone does not serve
    evaluated = etl_cli(workdir, "evaluate", v2)
    assert evaluated.returncode == 0, evaluated.stderr
    assert _json(evaluated)["promoted"] is True and _served(workdir) == v2

    proc = etl_cli(workdir, "rollback", v1)

    assert proc.returncode == 0, proc.stderr
    assert _json(proc) == {"version": v1, "previous_version": v2, "promoted": True, "epoch": 3}
    assert _served(workdir) == v1
    v1_model = workdir / "results" / "models" / v1 / "model.joblib"
    assert (workdir / "results" / "model.joblib").read_bytes() == v1_model.read_bytes()


@pytest.mark.parametrize(
    ("version", "expected"),
    [("20200101T000000Z-deadbeef", "does not exist"), ("latest", "is not a model version")],
)
def test_cli_rollback_unknown_version_exits_1(workdir: Path, version: str, expected: str, etl_cli):
    served = _served(workdir)
    proc = etl_cli(workdir, "rollback", version)
    assert proc.returncode == 1
    assert expected in proc.stderr and proc.stdout == ""
    assert _served(workdir) == served


def test_cli_load_reports_file_and_counts(tmp_path: Path, etl_cli):
    proc = etl_cli(tmp_path, "load")
    assert proc.returncode == 0, proc.stderr
    out = _json(proc)
    assert out["sha256"] == BUNDLED_SHA256
    assert Path(out["path"]) == tmp_path / "data" / "raw" / f"{BUNDLED_SHA256}.csv"
    assert out["rows"]["raw"] == 699 and out["rows"]["missing_dropped"] == 16
    assert out["rows"]["duplicates_dropped"] == 8
    assert out["classes"] == {"0": 439, "1": 236}


@pytest.mark.parametrize("source", ["missing-file", "unreachable-url"])
def test_cli_load_bad_source_exits_1_naming_data_url(tmp_path: Path, source: str, etl_cli):
    url = str(tmp_path / "nope.csv") if source == "missing-file" else f"http://127.0.0.1:{free_port()}/x.csv"
    proc = etl_cli(tmp_path, "load", DATA_URL=url)
    assert proc.returncode == 1
    shown = "nope.csv (local file)" if source == "missing-file" else url  # never the host's folders
    assert shown in proc.stderr and "DATA_URL" in proc.stderr


def test_cli_upload_backs_up_served_version(workdir: Path, etl_cli):
    served = _served(workdir)
    proc = etl_cli(workdir, "upload")
    assert proc.returncode == 0, proc.stderr
    out = _json(proc)
    assert out["version"] == served and out["drive"]["status"] == "skipped"
    assert sorted(p.name for p in Path(out["backup_dir"]).iterdir()) == [
        "metrics.json",
        "model.joblib",
        "report.html",
    ]


def test_cli_report_writes_the_report_of_a_version_again(workdir: Path, etl_cli):
    served = _served(workdir)
    results = workdir / "results"
    before = report_record(results, served)
    first = report_path(results, served).read_bytes()
    proc = etl_cli(workdir, "report", served)
    assert proc.returncode == 0, proc.stderr
    out = _json(proc)
    record = report_record(results, served)
    # written again under a new key; the first report's files are left as they were (written once)
    assert record["prefix"] != before["prefix"] and report_path(results, served).parent.is_dir()
    assert out["version"] == served and Path(out["report"]) == report_path(results, served)
    figures = [f"report/{n}.png" for n in ("roc", "pr", "threshold", "calibration", "confusion")]
    assert sorted(out["files"]) == sorted(["report.html", *figures]) and out["files"] == record["files"]
    for name, digest in out["files"].items():
        assert (
            hashlib.sha256((results / "models" / record["prefix"] / name).read_bytes()).hexdigest() == digest
        )
    assert (results / "models" / before["prefix"] / "report.html").read_bytes() == first
    assert f"report: wrote report.html and 5 figures of version {served}" in proc.stderr


@pytest.mark.parametrize(
    ("version", "expected"),
    [("20200101T000000Z-deadbeef", "does not exist"), ("../models", "is not a model version")],
)
def test_cli_report_unknown_version_exits_1(workdir: Path, version: str, expected: str, etl_cli):
    proc = etl_cli(workdir, "report", version)
    assert proc.returncode == 1 and proc.stdout == ""
    assert expected in proc.stderr


def test_cli_report_not_evaluated_version_exits_1(workdir: Path, etl_cli):
    registry = open_registry(make_settings(workdir))  # the registry the commands run in workdir open
    try:
        version = unevaluated_copy(registry, _served(workdir))  # the newest: trained, not evaluated
    finally:
        registry.close()
    proc = etl_cli(workdir, "report")
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"version {version} has not been evaluated" in proc.stderr


def test_cli_run_failure_with_fallback_serves_earlier_model(workdir: Path, tmp_path: Path, etl_cli):
    served = _served(workdir)
    proc = etl_cli(workdir, "run", "--serve-fallback", DATA_URL=str(tmp_path / "missing.csv"))
    assert proc.returncode == 0, proc.stderr
    assert "pipeline failed" in proc.stderr and "missing.csv" in proc.stderr
    assert f"serving the earlier promoted version {served}" in proc.stderr
    assert _served(workdir) == served


def test_cli_run_failure_without_earlier_model_exits_1(tmp_path: Path, etl_cli):
    proc = etl_cli(tmp_path, "run", "--serve-fallback", DATA_URL=str(tmp_path / "missing.csv"))
    assert proc.returncode == 1
    assert "run failed" in proc.stderr and "DATA_URL" in proc.stderr
    assert _served(tmp_path) is None


def test_cli_run_bad_data_exits_1_with_validation_message(tmp_path: Path, etl_cli):
    bad = tmp_path / "bad.csv"
    bad.write_text('"Id","Class"\n"1",0\n')
    proc = etl_cli(tmp_path, "run", DATA_URL=str(bad))
    assert proc.returncode == 1
    assert "missing column(s)" in proc.stderr


def test_cli_invalid_setting_exits_2(tmp_path: Path, etl_cli):
    proc = etl_cli(tmp_path, "models", TEST_SIZE="0.9")
    assert proc.returncode == 2
    assert "invalid settings" in proc.stderr and "TEST_SIZE: Input should be less than 0.5" in proc.stderr
    assert "0.9" not in proc.stderr  # the rule is named, the value is not (tests/etl/test_settings_errors.py)
