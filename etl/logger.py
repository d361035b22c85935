"""Logging is configured once, at the entry point; modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once (idempotent): one stream handler on stderr, UTC-free ISO times.

    Args:
        level: a logging level name such as ``INFO`` or ``DEBUG``.
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_bcd", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._bcd = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    # third-party chatter that would otherwise drown the pipeline's own lines
    for noisy in ("httpx", "httpcore", "googleapiclient.discovery_cache", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
