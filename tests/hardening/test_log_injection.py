"""A value with a NUL, CR/LF or another control character cannot forge a log line (issue 12, finding 5).

The one logging setup (etl/logger.py) writes every record on one line, with control characters in the
message, its arguments and the exception text escaped; uvicorn's own loggers go through it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, start_service
from tests.hardening.conftest import TOKEN

FORGED = "2026-01-01 00:00:00,000 INFO etl.registry: promoted version FORGED"
SHORT_FORGED = "2026-01-01 INFO app: FORGED"
SCRIPT = r"""
import logging
from etl.logger import setup_logging

setup_logging("INFO")
log = logging.getLogger("probe")
log.warning("value %s", "a\n" + FORGED)
log.warning("crlf %s|nul %s|esc %s", "b\r\n" + FORGED, "c\x00d", "\x1b[2J\x1b[31mred")
log.warning("unicode %s|%s|%s", "e\u2028" + FORGED, "f\x85g", "lone \ud800 surrogate")
log.warning("message itself\n" + FORGED)
try:
    raise ValueError("bad input\n" + FORGED)
except ValueError:
    log.exception("failed on %s", "h\ti")
log.warning("done")
"""


def test_logging_control_characters_escaped_one_line_per_record() -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"FORGED = {FORGED!r}\n{SCRIPT}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = result.stderr.decode("utf-8")  # strict: a lone surrogate written raw would not even encode
    lines = text.split("\n")
    assert lines[-1] == "", text
    lines = lines[:-1]
    print(f"\n{len(lines)} log lines:", *lines, sep="\n  ")
    assert len(lines) == 6, text  # six records, six lines: the forged text never starts a line
    assert all(" WARNING probe: " in line or " ERROR probe: " in line for line in lines), text
    assert not any(line.startswith(FORGED) for line in lines)
    for raw in ("\r", "\x00", "\x1b", "\u2028", "\x85", "\t"):
        assert raw not in text, repr(raw)
    assert f"value a\\n{FORGED}" in lines[0]
    assert f"crlf b\\r\\n{FORGED}|nul c\\x00d|esc \\x1b[2J\\x1b[31mred" in lines[1]
    assert f"unicode e\\u2028{FORGED}|f\\x85g|lone \\ud800 surrogate" in lines[2]
    assert f"message itself\\n{FORGED}" in lines[3]
    assert "failed on h\\ti\\nTraceback (most recent call last):\\n" in lines[4]
    assert f"ValueError: bad input\\n{FORGED}" in lines[4]
    assert "--- Logging error ---" not in text


@pytest.mark.integration
def test_logging_service_request_values_cannot_forge_lines(tmp_path: Path, bundled_csv: Path) -> None:
    """Through the real service: request values that end up in a logged error stay on their line."""
    svc = start_service(tmp_path / "svc", data_url=str(bundled_csv), token=TOKEN)
    data_dir = svc.env["DATA_DIR"]
    try:
        with httpx.Client(base_url=svc.url, headers=svc.auth(), timeout=60) as c:
            for path, body in [
                # refused by the request model (a 422 that logs nothing)
                ("/train", {"data_url": f"{data_dir}/missing.csv\n{FORGED}"}),
                ("/train", {"data_url": f"{data_dir}/missing.csv\r\n{FORGED}"}),
                # versions reach the pipeline (a 404 whose message is logged); at most 64 characters
                ("/evaluate", {"version": f"20260101T000000Z-0123abcd\n{SHORT_FORGED}"}),
                ("/upload", {"version": f"x\u2028{SHORT_FORGED}"}),
            ]:
                r = c.post(path, json=body)
                assert 400 <= r.status_code < 600 and r.status_code != 500, (path, r.status_code, r.text)
    finally:
        svc.stop()
    log = svc.log()
    assert not [line for line in log.splitlines() if line.startswith((FORGED, SHORT_FORGED))], log[-3000:]
    assert not [line for line in log.splitlines() if "FORGED" in line and not line[:4].isdigit()], log
    assert log.count("FORGED") >= 2, log[-3000:]  # the values were logged, escaped
    assert "uvicorn.error: Application startup complete." in log  # uvicorn logs through the same setup
