"""Auth cannot be silently off where it matters (issue 12, finding 6).

``python -m app`` refuses to listen beyond loopback without API_TOKEN unless ALLOW_UNAUTHENTICATED=true
(then it logs a loud warning), and ENVIRONMENT=production refuses tokens without real entropy. The
processes here listen on a TEST-NET address that is not this machine's, so nothing ever accepts
connections beyond loopback: a refused start exits before binding, an allowed one gets as far as
uvicorn's bind (which then fails).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from app.__main__ import is_loopback, unauthenticated_exposure
from app.settings import ServiceSettings, token_weakness
from tests.conftest import ROOT, free_port, start_service
from tests.hardening.conftest import TOKEN

NOWHERE = "198.51.100.7"  # TEST-NET-2 (RFC 5737): routable-looking, never an address of this machine
GOOD_TOKEN = secrets.token_urlsafe(32)
WEAK_TOKENS = {
    "repeated-a": "aaaaaaaaaaaaaaaa",
    "digits": "1234567890123456",
    "password-twice": "passwordpassword",
    "placeholder": "CHANGE_ME_PLEASE_TOKEN",
    "16-spaces": " " * 16,
    "env-example": "change-me-to-a-long-random-token",  # the .env.example placeholder, 32 characters
    "password-x8": "password" * 8,
    "hex-alphabet-twice": "0123456789abcdef" * 2,
    "sequence": "abcdefghijklmnopqrstuvwxyz0123456789",
}
GENERATED = 10_000


def _run_app(workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m app`` with ``env``; returns once it exits (a refusal, or uvicorn failing to bind)."""
    workdir.mkdir(parents=True, exist_ok=True)
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(workdir / "data"),
        "RESULTS_DIR": str(workdir / "results"),
        "UPLOAD_DIR": str(workdir / "upload"),
        "PORT": str(free_port()),
        "WORKERS": "1",
        "ENVIRONMENT": "development",
        "API_TOKEN": "",
        "METRICS_TOKEN": "",
        "ALLOW_UNAUTHENTICATED": "false",
        "LOG_LEVEL": "INFO",
        **env,
    }
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "app"], cwd=workdir, env=full, capture_output=True, text=True, timeout=120
    )


@pytest.mark.integration
@pytest.mark.parametrize("host", [NOWHERE, "service.example.invalid"])
def test_listen_beyond_loopback_without_token_refused(tmp_path: Path, host: str) -> None:
    result = _run_app(tmp_path, HOST=host)
    assert result.returncode == 2, result.stderr[-2000:]
    log = result.stderr
    assert f"refusing to start: HOST={host} listens beyond loopback and API_TOKEN is empty" in log, log
    assert "ALLOW_UNAUTHENTICATED=true" in log, log
    assert "serving on" not in log and "Started server process" not in log, log  # it never got to bind


@pytest.mark.integration
def test_listen_beyond_loopback_opt_out_warns_and_starts(tmp_path: Path) -> None:
    result = _run_app(tmp_path, HOST=NOWHERE, ALLOW_UNAUTHENTICATED="true")
    log = result.stderr
    warning = [line for line in log.splitlines() if " WARNING app: ALLOW_UNAUTHENTICATED=true" in line]
    assert warning and "OPEN TO THE NETWORK" in warning[0], log
    assert f"serving on http://{NOWHERE}:" in log, log  # went on to uvicorn (whose bind then fails here)
    assert "refusing to start" not in log, log


@pytest.mark.integration
def test_listen_beyond_loopback_with_token_starts_quietly(tmp_path: Path) -> None:
    result = _run_app(tmp_path, HOST=NOWHERE, API_TOKEN=GOOD_TOKEN)
    log = result.stderr
    assert f"serving on http://{NOWHERE}:" in log, log
    assert "refusing to start" not in log and "ALLOW_UNAUTHENTICATED" not in log, log
    assert GOOD_TOKEN not in log + result.stdout


@pytest.mark.integration
def test_listen_loopback_without_token_serves(tmp_path: Path, bundled_csv: Path) -> None:
    svc = start_service(tmp_path / "svc", data_url=str(bundled_csv), token="")
    svc.stop()
    assert "refusing to start" not in svc.log() and "ALLOW_UNAUTHENTICATED" not in svc.log()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        (NOWHERE, False),
        ("api", False),
    ],
)
def test_listen_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    settings = ServiceSettings(_env_file=None, host=host, api_token="")  # type: ignore[call-arg]
    assert (unauthenticated_exposure(settings) is None) is loopback
    with_token = ServiceSettings(_env_file=None, host=host, api_token=TOKEN)  # type: ignore[call-arg]
    assert unauthenticated_exposure(with_token) is None


@pytest.mark.integration
@pytest.mark.parametrize(
    ("variable", "name"),
    [
        *(
            ("API_TOKEN", name)
            for name in ("repeated-a", "digits", "password-twice", "placeholder", "16-spaces")
        ),
        ("METRICS_TOKEN", "password-twice"),
    ],
)
def test_token_weak_refused_in_production(tmp_path: Path, variable: str, name: str) -> None:
    weak = WEAK_TOKENS[name]
    env = {"ENVIRONMENT": "production", "API_TOKEN": GOOD_TOKEN, variable: weak}
    result = _run_app(tmp_path, **env)
    output = result.stderr + result.stdout
    assert result.returncode == 2, output[-2000:]
    assert f"{variable} is too weak for ENVIRONMENT=production: " in output, output
    assert "token_urlsafe(32)" in output and "openssl rand -hex 32" in output, output  # how to make one
    if weak.strip():
        assert weak not in output, "the error shows the token"
    assert GOOD_TOKEN not in output


def test_token_rule_accepts_generated_tokens() -> None:
    """The false-rejection rate of the rule on 10,000 tokens of each documented kind."""
    urlsafe = [secrets.token_urlsafe(32) for _ in range(GENERATED)]
    # 10,000 outputs of `openssl rand -hex 32`, from one run of openssl (its -hex output is the same)
    out = subprocess.run(
        ["openssl", "rand", "-hex", str(32 * GENERATED)], capture_output=True, text=True, check=True
    ).stdout.strip()
    hexes = [out[i : i + 64] for i in range(0, len(out), 64)]
    assert len(hexes) == GENERATED and all(len(h) == 64 for h in hexes)
    rejected = {
        "token_urlsafe(32)": [t for t in urlsafe if token_weakness(t)],
        "openssl rand -hex 32": [t for t in hexes if token_weakness(t)],
    }
    print(
        "\ntoken rule false rejections:",
        ", ".join(f"{kind} {len(bad)}/{GENERATED}" for kind, bad in rejected.items()),
    )
    assert rejected == {"token_urlsafe(32)": [], "openssl rand -hex 32": []}
    for token in (urlsafe[0], hexes[0], TOKEN):
        ServiceSettings(_env_file=None, environment="production", api_token=token, metrics_token=token)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", list(WEAK_TOKENS))
def test_token_rule_refuses_weak_tokens(name: str) -> None:
    assert token_weakness(WEAK_TOKENS[name])
