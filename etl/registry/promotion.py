"""Promotion: moving the served pointer to another version.

The pointer moves by compare-and-swap on its epoch: a promotion judged against one epoch fails with
PromotionConflictError if another promotion moved the pointer first. A version is promoted only once it
passed the gate and its files pass their checks; a trainer promoting what it trained also proves, in the same
transaction, that its training lease is still its own (fencing). ``Registry.promote`` (core.py) calls this.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from etl.errors import LeaseLostError
from etl.registry_db.store import check_servable

if TYPE_CHECKING:
    from etl.registry.core import Registry
    from etl.registry_db.lease import Lease

log = logging.getLogger(__name__)


def promote(
    registry: Registry, version: str, *, expected_epoch: int | None, lease: Lease | None
) -> str | None:
    registry.check_version(version)
    if expected_epoch is None:
        expected_epoch = registry.pointer().epoch
    check_servable(version, registry.read_metrics(version))
    if lease is not None and lease.lost.is_set():
        raise LeaseLostError(
            f"this process's training lease was taken over by another trainer: version {version} is not "
            "promoted by it"
        )
    registry.verify(version)
    before = registry._db.promote(version, expected_epoch, None if lease is None else lease.fence)
    log.info("promoted version %s at epoch %d (previously %s)", version, expected_epoch + 1, before.version)
    try:
        registry.sync_mirror()
    except Exception as exc:  # the promotion stands; recover() re-syncs the copies
        log.error("promoted %s, but could not refresh the copies in %s: %s", version, registry.root, exc)
    return before.version
