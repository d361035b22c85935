"""What the prediction record refuses: an id it does not hold, an outcome that contradicts the one on
record. (A database that cannot be reached is etl's ``DatabaseUnavailableError``.) app/errors.py maps each
to its status."""

from __future__ import annotations

from collections.abc import Sequence

from etl.errors import EtlError

_SHOWN = 3  # ids named in a message


def _some(ids: Sequence[str]) -> str:
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


class RecordError(EtlError):
    """Base class of the prediction record's refusals."""


class PredictionNotFoundError(RecordError):
    """No prediction with that id is on record (never made, made with PREDICTION_LOG=off, lost, or purged)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        noun = "prediction" if len(ids) == 1 else f"{len(ids)} predictions"
        super().__init__(f"no {noun} on record with id {_some(self.ids)}")


class OutcomeConflictError(RecordError):
    """An outcome report contradicts the outcome already on record and does not say ``replace``."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        super().__init__(
            f'another outcome is on record for {_some(self.ids)}: send "replace": true to replace it '
            "(the old one stays in the record's history)"
        )
