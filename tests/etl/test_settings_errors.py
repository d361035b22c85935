"""A bad setting stops every entry point with the variable and its rule, never the value.

Each entry point runs in a folder whose ``.env`` holds the bad values next to secrets (a pydantic error
used to print ``input_value={...}``, which showed the end of the last ``.env`` value). Every case calls the
entry point's own function in this process (``etl.__main__.main``, ``app.__main__.main``, and
``app.main.create_app``, which ``uvicorn --factory`` calls) with the environment and working folder a
subprocess would have; one case per entry point also runs as a real subprocess, for what only a process
shows: its exit status, and that nothing on the way out (uvicorn included) prints a traceback or a value.
The service's entry points read the service's settings (app/settings.py); the pipeline's CLI reads only the
pipeline's (etl/settings.py), so a bad service setting does not stop it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import app.__main__
import etl.__main__
from app.main import create_app
from app.settings import ServiceSettings
from etl.settings import Settings
from tests.conftest import ROOT
from tests.in_process import run_in_process

ENTRY_POINTS = {
    "etl-cli": ["-m", "etl", "models"],
    "python-m-app": ["-m", "app"],
    "uvicorn-factory": ["-m", "uvicorn", "--factory", "app.main:create_app", "--port", "0"],
}
PIPELINE_ONLY = {"etl-cli"}  # entry points that read etl.settings.Settings, not the service's
SERVICE_VARIABLES = {
    name.upper() for name in ServiceSettings.model_fields.keys() - Settings.model_fields.keys()
}
SECRETS = {
    "GRAFANA_ADMIN_PASSWORD": "SecretGrafanaPw-9f8e7d6c",
    "POSTGRES_PASSWORD": "pg-Secret-4b1c2d3e",
}
CASES = {
    # a rule across fields (pydantic's error held the whole input: every .env value)
    "placeholder-token": (
        {"ENVIRONMENT": "production", "API_TOKEN": "change-me-7a8b9c0d1e"},
        ["API_TOKEN is too weak for ENVIRONMENT=production: a placeholder"],
    ),
    "short-token": (
        {"ENVIRONMENT": "production", "API_TOKEN": "tok3n-5f6e"},
        ["API_TOKEN is too weak for ENVIRONMENT=production: shorter than 32 characters"],
    ),
    "field-rules": (
        {"PORT": "70123", "TEST_SIZE": "0.777", "LOG_LEVEL": "LOUD9c2b", "ENVIRONMENT": "prod-3e4f"},
        [
            "PORT: Input should be less than or equal to 65535",
            "TEST_SIZE: Input should be less than 0.5",
            "LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
            "ENVIRONMENT: Input should be 'development' or 'production'",
        ],
    ),
    "unparsable-list": ({"GDRIVE_SCOPES": '["https://scope-6d7e'}, ["GDRIVE_SCOPES: "]),
}
# the case each entry point also runs as a real process: a rule across fields for the service (the one that
# printed every .env value), the field rules for the CLI (service variables among them), a value that cannot
# be decoded for uvicorn's factory
SUBPROCESS_CASES = {
    "etl-cli": "field-rules",
    "python-m-app": "placeholder-token",
    "uvicorn-factory": "unparsable-list",
}

RunEntry = Callable[[Path, str, dict[str, str]], tuple[int, str]]


def write_dotenv(folder: Path, values: dict[str, str]) -> set[str]:
    """Write ``values`` and the secrets to ``folder/.env``; the names the environment must not override."""
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in {**values, **SECRETS}.items()))
    return {*values, *SECRETS, "API_TOKEN", "ENVIRONMENT"}


def run_subprocess(folder: Path, entry: str, values: dict[str, str]) -> tuple[int, str]:
    """Run the entry point as ``python ARGS`` in ``folder`` with ``values`` and the secrets in its ``.env``
    (nothing in the environment overrides them): its exit status and everything it printed."""
    names = write_dotenv(folder, values)
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("PROMETHEUS_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, *ENTRY_POINTS[entry]],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _python_m_app() -> None:
    app.__main__.main()  # serving is refused (tests/in_process.py), so this returns only by raising


def _uvicorn_factory() -> None:
    create_app()  # what ``uvicorn --factory app.main:create_app`` calls


IN_PROCESS: dict[str, Callable[[], int | None]] = {
    "etl-cli": lambda: etl.__main__.main(["models"]),
    "python-m-app": _python_m_app,
    "uvicorn-factory": _uvicorn_factory,
}


@pytest.fixture
def run_entry(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> RunEntry:
    """``run(folder, entry, values)``: the entry point's function in this process, as ``run_subprocess``
    would run it (working folder, ``.env``, environment); its exit status and everything it printed."""

    def run(folder: Path, entry: str, values: dict[str, str]) -> tuple[int, str]:
        names = write_dotenv(folder, values)
        ran = run_in_process(
            monkeypatch,
            capfd,
            caplog,
            IN_PROCESS[entry],
            cwd=folder,
            unset=lambda name: name in names or name.startswith("PROMETHEUS_"),
        )
        return ran.returncode, ran.stdout + ran.stderr

    return run


def variable(line: str) -> str:
    """The variable an expected line is about (the word before its first ':' or ' ')."""
    return line.replace(":", " ").split()[0]


def expected_lines(entry: str, case: str) -> tuple[list[str], list[str]]:
    """(lines the entry point must print, lines it must not): the pipeline's CLI says nothing about the
    service's variables."""
    lines = CASES[case][1]
    if entry not in PIPELINE_ONLY:
        return lines, []
    ignored = [line for line in lines if variable(line) in SERVICE_VARIABLES]
    return [line for line in lines if line not in ignored], ignored


def assert_names_variable_and_rule_not_value(entry: str, case: str, returncode: int, output: str) -> None:
    values, _ = CASES[case]
    expected, ignored = expected_lines(entry, case)
    assert returncode == 2, output
    assert "invalid settings" in output, output
    for line in expected:
        assert line in output, output
    for line in ignored:
        assert line not in output and f"{variable(line)}:" not in output, output
    for value in [*values.values(), *SECRETS.values()]:
        if value not in {"production"}:
            assert value not in output, f"{value!r} printed:\n{output}"
    assert "Traceback" not in output and "input_value" not in output, output


ERROR_RUNS = [
    (entry, case)
    for entry in sorted(ENTRY_POINTS)
    for case in sorted(CASES)
    if expected_lines(entry, case)[0]
]


@pytest.mark.parametrize(("entry", "case"), ERROR_RUNS)
def test_settings_error_names_variable_and_rule_not_value(
    tmp_path: Path, entry: str, case: str, run_entry: RunEntry
) -> None:
    returncode, output = run_entry(tmp_path, entry, CASES[case][0])
    assert_names_variable_and_rule_not_value(entry, case, returncode, output)


@pytest.mark.parametrize(("entry", "case"), sorted(SUBPROCESS_CASES.items()))
def test_settings_error_real_process_exits_2_naming_variable_and_rule_not_value(
    tmp_path: Path, entry: str, case: str
) -> None:
    assert (entry, case) in ERROR_RUNS
    returncode, output = run_subprocess(tmp_path, entry, CASES[case][0])
    assert_names_variable_and_rule_not_value(entry, case, returncode, output)


@pytest.mark.parametrize("case", sorted(c for c in CASES if not expected_lines("etl-cli", c)[0]))
def test_settings_etl_cli_ignores_service_settings(tmp_path: Path, case: str, run_entry: RunEntry) -> None:
    """``python -m etl`` does not need the service's settings: bad ones do not stop it."""
    values, _ = CASES[case]
    returncode, output = run_entry(tmp_path, "etl-cli", values)
    assert returncode == 0, output
    assert "invalid settings" not in output and "Traceback" not in output, output
    for value in [*values.values(), *SECRETS.values()]:
        if value not in {"production"}:
            assert value not in output, f"{value!r} printed:\n{output}"
