"""docker/postgres/create_databases.sh, the compose stack's one-shot `databases` service, run against a real
PostgreSQL (tests/postgres.py) as compose runs it: it makes the registry's role and database once, sets the
role's password from .env at every run, and the role can then migrate and use its registry."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from etl.errors import DatabaseUnavailableError
from etl.registry import Registry
from tests.deploy.monitoring import ROOT
from tests.postgres import SUPERUSER, PostgresCluster

SCRIPT = ROOT / "docker" / "postgres" / "create_databases.sh"

pytestmark = pytest.mark.integration


def _run(postgres: PostgresCluster, *names: str, **env: str) -> subprocess.CompletedProcess[str]:
    server = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres.port),
        "PGUSER": SUPERUSER,
        "PGPASSWORD": postgres.password,
    }
    return subprocess.run(
        ["sh", str(SCRIPT), *(names or ("registry",))],
        env={**server, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _pointer(url: str, tmp_path: Path) -> tuple[str | None, int]:
    registry = Registry(tmp_path, registry_url=url, artifact_url=str(tmp_path / "models"))
    try:
        pointer = registry.pointer()
    finally:
        registry.close()
    return pointer.version, pointer.epoch


def test_create_databases_registry_once_then_password_from_env(postgres: PostgresCluster, tmp_path: Path):
    postgres.sql("DROP DATABASE IF EXISTS registry WITH (FORCE)")
    postgres.sql("DROP ROLE IF EXISTS registry")
    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)

    for _ in range(2):  # every `docker compose up` runs it
        result = _run(postgres, REGISTRY_DB_PASSWORD=first)
        assert result.returncode == 0, result.stderr
        assert (
            result.stdout.strip() == "databases: registry ready"
            and first not in result.stdout + result.stderr
        )
    assert (
        postgres.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'registry'")
        == "registry"
    )
    assert _pointer(postgres.url("registry", user="registry", password=first), tmp_path) == (None, 0)

    assert _run(postgres, REGISTRY_DB_PASSWORD=second).returncode == 0  # the password in .env changed
    with pytest.raises((DatabaseUnavailableError, OperationalError)):
        _pointer(postgres.url("registry", user="registry", password=first), tmp_path / "old")
    assert _pointer(postgres.url("registry", user="registry", password=second), tmp_path / "new") == (None, 0)


def test_create_databases_without_password_refuses_naming_it(postgres: PostgresCluster):
    result = _run(postgres)
    assert result.returncode == 1
    assert result.stderr.strip() == "databases: REGISTRY_DB_PASSWORD is not set; run make secrets"


def test_create_databases_predictions_under_its_own_variable(postgres: PostgresCluster):
    """`predictions:PREDICTION_DB_PASSWORD`, as compose runs it: the prediction record's role (no superuser,
    no createdb) owns its database, which no other role may connect to, and can migrate its tables there;
    the stale password stops working once .env's changes; without the variable it refuses, naming it."""
    from app.records.tables import MIGRATIONS
    from etl.db import make_engine, upgrade

    arg = "predictions:PREDICTION_DB_PASSWORD"
    refused = _run(postgres, arg)
    assert refused.returncode == 1 and "PREDICTION_DB_PASSWORD is not set" in refused.stderr
    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    for password in (first, first, second):
        result = _run(postgres, arg, PREDICTION_DB_PASSWORD=password)
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout + result.stderr
    engine = make_engine(postgres.url("predictions", user="predictions", password=second))
    try:
        assert upgrade(engine, MIGRATIONS)  # the service's own role creates its tables
    finally:
        engine.dispose()
    stale = make_engine(postgres.url("predictions", user="predictions", password=first))
    try:
        with pytest.raises((DatabaseUnavailableError, OperationalError)):
            upgrade(stale, MIGRATIONS)
    finally:
        stale.dispose()
    assert postgres.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'predictions'") == (
        "predictions"
    )
    assert postgres.sql("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = 'predictions'") == "f"
    assert postgres.sql("SELECT has_database_privilege('public', 'predictions', 'CONNECT')") == "f"
