"""What the app tests share: one registry with a served model (trained once per session), clients over a copy
of it or over nothing, and the request bodies and readers the tests use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import ServiceSettings
from etl.features import FEATURE_NAMES
from etl.pipeline import open_registry
from etl.registry import Registry
from tests.pipeline_support import (
    copy_tree,
    instance,
    make_settings,
    served_template_folder,
    unevaluated_copy,
)

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BENIGN = instance((5, 1, 1, 1, 2, 1, 3, 1, 1))  # Id 1000025, Class 0
MALIGNANT = instance((8, 10, 10, 8, 7, 10, 9, 7, 1))  # Id 1017122, Class 1


def service_settings(base: Path, **overrides: object) -> ServiceSettings:
    """The service's settings rooted in ``base``: API_TOKEN=TOKEN, no model polling, no download retries."""
    defaults: dict[str, object] = {"api_token": TOKEN, "model_poll_seconds": 0, "download_retries": 0}
    settings = make_settings(base, settings_class=ServiceSettings, **{**defaults, **overrides})
    assert isinstance(settings, ServiceSettings)
    return settings


@contextlib.contextmanager
def client_for(settings: ServiceSettings) -> Iterator[TestClient]:
    """The app in-process with its lifespan running."""
    with TestClient(create_app(settings)) as client:
        yield client


def named(row: Sequence[int], names: Sequence[str] = FEATURE_NAMES) -> dict[str, int]:
    """A /predict body: the nine scores under ``names`` (the snake_case names, or the CSV column names)."""
    return dict(zip(names, row, strict=True))


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """A /predict or /predict/batch answer without its prediction ids (each answer gets new ones)."""
    if "predictions" in body:
        return {**body, "predictions": [without_ids(p) for p in body["predictions"]]}
    return {key: value for key, value in body.items() if key != "prediction_id"}


def only_error(response: Any) -> dict[str, Any]:
    """The one field error of a 422."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and len(detail) == 1, detail
    return detail[0]


def sample(metrics_text: str, line_prefix: str) -> float:
    """The value of the exposition line starting with ``line_prefix``, or 0 when there is none."""
    for line in metrics_text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A state folder with one version trained on the bundled CSV, evaluated and promoted; never changed
    (tests that change state work on a copy: ``served``)."""
    return served_template_folder(tmp_path_factory)


class Served:
    """A copy of the template for one test."""

    def __init__(self, base: Path, version: str) -> None:
        self.base = base
        self.version = version

    def settings(self, **overrides: object) -> ServiceSettings:
        return service_settings(self.base, **overrides)

    @property
    def registry(self) -> Registry:
        return open_registry(self.settings())

    def unevaluated_copy(self, copy: str = "20990101T000000Z-0000abcd") -> str:
        """The served version's files and training metadata published again as ``copy``: trained, not
        evaluated, no report."""
        registry = self.registry
        try:
            return unevaluated_copy(registry, self.version, copy)
        finally:
            registry.close()


@pytest.fixture
def served(template: tuple[Path, str], tmp_path: Path) -> Served:
    base, version = template
    return Served(copy_tree(base, tmp_path / "svc"), version)


@pytest.fixture
def client(served: Served) -> Iterator[TestClient]:
    """The app over a copy of the template, API_TOKEN=TOKEN."""
    with client_for(served.settings()) as c:
        yield c


@pytest.fixture
def empty_client(tmp_path: Path) -> Iterator[TestClient]:
    """The app over an empty state folder: no model served."""
    with client_for(service_settings(tmp_path / "empty")) as c:
        yield c


@pytest.fixture(scope="module")
def predict_client(
    template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The app over the template itself, no token, shared by a module: for requests that change nothing
    but the prediction record (/predict, /predict/batch, /metrics), which is kept outside the template."""
    records = tmp_path_factory.mktemp("records") / "predictions.sqlite3"
    settings = service_settings(template[0], api_token="", prediction_db_url=f"sqlite:///{records}")
    with client_for(settings) as c:
        yield c
