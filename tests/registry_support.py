"""How the tests look at a registry behind the service's back: its rows (through SQL on the registry's
database) and its files (in the default artifact store, the folder RESULTS_DIR/models), and how they tamper
with them as an attacker who can write one store but has no signing key would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, text

from etl.db import sqlite_url


def registry_db_url(results_dir: Path) -> str:
    """The default registry database of ``results_dir``."""
    return sqlite_url(Path(results_dir) / "registry.db")


def sql(url: str, statement: str, **params: Any) -> list[dict[str, Any]]:
    """Run one statement on the registry's database (a plain engine, committed); returns the rows."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [dict(row) for row in result.mappings()] if result.returns_rows else []
    finally:
        engine.dispose()


def version_row(url: str, version: str) -> dict[str, Any]:
    (row,) = sql(url, "SELECT * FROM registry_versions WHERE version = :v", v=version)
    for column in ("meta", "files", "state"):
        if isinstance(row[column], str):
            row[column] = json.loads(row[column])
    return row


def meta_of(results_dir: Path, version: str) -> dict[str, Any]:
    """A version's metadata as the registry records it (training meta, files' sha256, signature, state)."""
    row = version_row(registry_db_url(results_dir), version)
    return {
        **row["meta"],
        "version": version,
        "created_at": row["created_at"],
        "files": row["files"],
        "model_signature": row["model_signature"],
        **row["state"],
    }


def metrics_of(results_dir: Path, version: str) -> dict[str, Any] | None:
    rows = sql(
        registry_db_url(results_dir),
        "SELECT e.metrics, e.report FROM registry_evaluations e JOIN registry_versions v "
        "ON v.evaluation_id = e.id WHERE v.version = :v",
        v=version,
    )
    if not rows:
        return None
    metrics = rows[0]["metrics"]
    return json.loads(metrics) if isinstance(metrics, str) else metrics


def report_record(results_dir: Path, version: str) -> dict[str, Any] | None:
    rows = sql(
        registry_db_url(results_dir),
        "SELECT e.report FROM registry_evaluations e JOIN registry_versions v "
        "ON v.evaluation_id = e.id WHERE v.version = :v",
        v=version,
    )
    report = rows[0]["report"] if rows else None
    return json.loads(report) if isinstance(report, str) else report


def served_of(results_dir: Path) -> tuple[str | None, int]:
    """(served version, epoch) from the pointer row."""
    (row,) = sql(registry_db_url(results_dir), "SELECT version, epoch FROM registry_pointer")
    return row["version"], int(row["epoch"])


def version_dir(results_dir: Path, version: str) -> Path:
    """The version's folder in the default artifact store."""
    return Path(results_dir) / "models" / version


def report_path(results_dir: Path, version: str, name: str = "report.html") -> Path:
    """A file of the version's current report in the default artifact store."""
    record = report_record(results_dir, version)
    assert record is not None, f"version {version} has no report"
    return Path(results_dir) / "models" / record["prefix"] / name


def reference_frame(results_dir: Path) -> pd.DataFrame:
    """The pinned reference set, read from its file in the default artifact store."""
    (pin,) = sql(registry_db_url(results_dir), "SELECT key FROM registry_reference ORDER BY id DESC LIMIT 1")
    return pd.read_csv(Path(results_dir) / "models" / pin["key"])


def set_row(url: str, version: str, **columns: Any) -> None:
    """Overwrite columns of a version's row (JSON columns given as Python values)."""
    as_json = {k for k, v in columns.items() if isinstance(v, dict | list)}
    cast = url.startswith("postgres")
    assignments = ", ".join(
        f"{name} = CAST(:{name} AS json)" if name in as_json and cast else f"{name} = :{name}"
        for name in columns
    )
    values = {k: json.dumps(v) if k in as_json else v for k, v in columns.items()}
    sql(
        url, f"UPDATE registry_versions SET {assignments} WHERE version = :version", version=version, **values
    )


def uploaded_bytes(results_dir: Path, version: str) -> dict[str, bytes]:
    """What an upload (backup and Drive) of ``version`` must carry, read from the stores behind the
    registry's back: model.joblib and the current report from the artifact folder, metrics.json as the
    database's metrics in the project's JSON layout."""
    from etl.atomic import json_bytes

    return {
        "model.joblib": (version_dir(results_dir, version) / "model.joblib").read_bytes(),
        "metrics.json": json_bytes(metrics_of(results_dir, version)),
        "report.html": report_path(results_dir, version).read_bytes(),
    }
