"""An entry point's function run in this process as its subprocess would run (``python -m etl``,
``python -m app``, uvicorn's factory): the same working folder, environment and ``.env``, its exit status and
what it printed (file descriptors 1 and 2, so C-level writes too) and logged. An interpreter start costs a
second or two; this costs milliseconds, so the tests keep one real subprocess per entry point, for what only
a process shows, and run every other case here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

import app.__main__
import app.main
import etl.__main__
from app.settings import get_settings


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str  # what the command wrote to stderr, its log lines included


def _refuse_to_serve(*args: object, **kwargs: object) -> None:
    raise AssertionError("the settings were accepted: the entry point went on to serve")


def run_in_process(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    main: Callable[[], int | None],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    unset: Callable[[str], bool] = lambda name: False,
) -> Ran:
    """``main()`` in ``cwd`` with the variables ``unset`` names removed and ``env`` set (all restored after).

    Its status is what it returned (``None``: 0) or the code of the ``SystemExit`` it raised. Logging is left
    to pytest's capture at INFO, the entry points' default (``setup_logging`` would add a handler bound to
    this test's stderr); the service's settings are read afresh (``get_settings`` caches them); serving is
    refused (``uvicorn.run`` raises), so an entry point that accepts its settings fails the test at once
    instead of listening.
    """
    with monkeypatch.context() as m:
        for name in list(os.environ):
            if unset(name):
                m.delenv(name)
        for name, value in (env or {}).items():
            m.setenv(name, value)
        m.chdir(cwd)
        for module in (etl.__main__, app.__main__, app.main):
            m.setattr(module, "setup_logging", lambda level="INFO": None)
        m.setattr(uvicorn, "run", _refuse_to_serve)
        capfd.readouterr()
        caplog.clear()
        get_settings.cache_clear()
        try:
            with caplog.at_level(logging.INFO):
                code = main() or 0
        except SystemExit as exc:  # as the interpreter ends: None is 0, a message is printed with 1
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                code = 1
                print(exc.code, file=sys.stderr)
        finally:
            get_settings.cache_clear()
        out, err = capfd.readouterr()
    return Ran(code, out, err + caplog.text)


def unset_prefixed(prefixes: Iterable[str]) -> Callable[[str], bool]:
    """``unset`` for the variables starting with any of ``prefixes``."""
    chosen = tuple(prefixes)
    return lambda name: name.startswith(chosen)
