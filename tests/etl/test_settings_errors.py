"""A bad setting stops every entry point with the variable and its rule, never the value.

Each entry point runs as a real subprocess in a folder whose ``.env`` holds the bad values next to secrets
(a pydantic error used to print ``input_value={...}``, which showed the end of the last ``.env`` value).
The service's entry points read the service's settings (app/settings.py); the pipeline's CLI reads only the
pipeline's (etl/settings.py), so a bad service setting does not stop it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import ServiceSettings
from etl.settings import Settings
from tests.conftest import ROOT

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


def run_with_dotenv(
    tmp_path: Path, args: list[str], values: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in ``tmp_path`` with ``values`` and the secrets in its ``.env`` (nothing in the
    environment overrides them)."""
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in {**values, **SECRETS}.items()))
    names = {*values, *SECRETS, "API_TOKEN", "ENVIRONMENT"}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("PROMETHEUS_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


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


ERROR_RUNS = [
    (entry, case)
    for entry in sorted(ENTRY_POINTS)
    for case in sorted(CASES)
    if expected_lines(entry, case)[0]
]


@pytest.mark.parametrize(("entry", "case"), ERROR_RUNS)
def test_settings_error_names_variable_and_rule_not_value(tmp_path: Path, entry: str, case: str) -> None:
    values, _ = CASES[case]
    expected, ignored = expected_lines(entry, case)
    proc = run_with_dotenv(tmp_path, ENTRY_POINTS[entry], values)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "invalid settings" in output, output
    for line in expected:
        assert line in output, output
    for line in ignored:
        assert line not in output and f"{variable(line)}:" not in output, output
    for value in [*values.values(), *SECRETS.values()]:
        if value not in {"production"}:
            assert value not in output, f"{value!r} printed:\n{output}"
    assert "Traceback" not in output and "input_value" not in output, output


@pytest.mark.parametrize("case", sorted(c for c in CASES if not expected_lines("etl-cli", c)[0]))
def test_settings_etl_cli_ignores_service_settings(tmp_path: Path, case: str) -> None:
    """``python -m etl`` does not need the service's settings: bad ones do not stop it."""
    values, _ = CASES[case]
    proc = run_with_dotenv(tmp_path, ENTRY_POINTS["etl-cli"], values)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "invalid settings" not in output and "Traceback" not in output, output
    for value in [*values.values(), *SECRETS.values()]:
        if value not in {"production"}:
            assert value not in output, f"{value!r} printed:\n{output}"
