"""Fixtures of the etl tests: a clock the tests move, and one training on the bundled data to copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from etl.pipeline import TrainSummary, open_registry, train_version
from etl.settings import Settings
from tests.pipeline_support import built_once, copy_tree, make_settings


class FakeClock:
    """Time that moves only when the code under test sleeps (or a test moves ``now``)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainSummary]:
    """A folder holding one version trained on the bundled data with the default settings, not evaluated,
    and its summary. Tests copy it (:func:`trained_copy`) instead of training again."""

    def build(base: Path) -> dict[str, Any]:
        settings = make_settings(base)
        registry = open_registry(settings)
        try:
            return train_version(settings, registry).to_dict()
        finally:
            registry.close()  # the database whole in its file, so that the folder can be copied

    base, summary = built_once(tmp_path_factory, "trained-template", build)
    return base, TrainSummary(**summary)


def trained_copy(
    template: tuple[Path, TrainSummary], dest: Path, **overrides: object
) -> tuple[Settings, TrainSummary]:
    """A copy of ``trained_template`` in ``dest``, with settings rooted there, and the version's summary."""
    base, trained = template
    copy_tree(base, dest)
    return make_settings(dest, **overrides), trained
