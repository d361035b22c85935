"""Logging is configured once, at the entry point; modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import re
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# C0 and C1 control characters (newline, CR, NUL, ESC...), DEL, the Unicode line and paragraph separators,
# and lone surrogates (which cannot be written as UTF-8)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


class EscapingFormatter(logging.Formatter):
    """Formats a record as one line: control characters in the message, its arguments and the exception
    text are written escaped (``\\n``, ``\\x00``, ``\\u2028``), so a logged value cannot forge a log line
    or hide text with terminal escapes. A traceback becomes one line with ``\\n`` between its lines."""

    def format(self, record: logging.LogRecord) -> str:
        return _UNSAFE.sub(_escape, super().format(record))


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once (idempotent): one stream handler on stderr, UTC-free ISO times, every
    record on one line with control characters escaped.

    Args:
        level: a logging level name such as ``INFO`` or ``DEBUG``.
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_bcd", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter(_FORMAT))
        handler._bcd = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    # third-party chatter that would otherwise drown the pipeline's own lines; botocore's DEBUG lines also
    # show the AWS access key id (in each request's Authorization header)
    for noisy in (
        "httpx",
        "httpcore",
        "googleapiclient.discovery_cache",
        "urllib3",
        "botocore",
        "aiobotocore",
        "s3fs",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
