"""The numbers of a report: metrics.json, and the one way each of its values is printed (``Page``), shared by
the HTML page and the figures' text.

Every number is formatted here and printed inside an element naming its JSON pointer and format
(``data-metric``, ``data-format``); a number that belongs to the report's own words is marked ``data-const``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

NA = "not recorded"


def _fmt(value: Any, fmt: str) -> str:
    return format(value, fmt)


def _pointer(path: Sequence[str | int]) -> str:
    """The RFC 6901 JSON pointer of ``path``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def const(text: str) -> str:
    """A number that is a fact of the report's text, not a figure of this version (a year, "95%")."""
    return f"<span data-const>{html.escape(text)}</span>"


class Page:
    """metrics.json, and the one way its values are printed (HTML) or drawn (figure text)."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def get(self, *path: str | int) -> Any:
        node: Any = self.metrics
        for key in path:
            in_dict = isinstance(node, dict) and isinstance(key, str) and key in node
            in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
            if not (in_dict or in_list):
                return None
            node = node[key]
        return node

    def plain(self, *path: str | int, fmt: str = ".3f") -> str:
        """The value as a figure's text shows it (the same format as the HTML)."""
        value = self.get(*path)
        return NA if not is_number(value) else _fmt(value, fmt)

    def number(self, *path: str | int, fmt: str = ".3f") -> str:
        """An HTML element printing the number at ``path``, naming where it comes from and its format."""
        value = self.get(*path)
        if not is_number(value):
            return f'<span class="na">{NA}</span>'
        return (
            f'<span class="m" data-metric="{html.escape(_pointer(path))}" data-format="{html.escape(fmt)}">'
            f"{html.escape(_fmt(value, fmt))}</span>"
        )

    def text(self, *path: str | int, missing: str = NA) -> str:
        """An HTML element printing the string at ``path`` (escaped: it may come from a data source)."""
        value = self.get(*path)
        if not isinstance(value, str):
            return f'<span class="na">{html.escape(missing)}</span>'
        pointer = html.escape(_pointer(path))
        return f'<span class="m" data-metric="{pointer}" data-format="s">{html.escape(value)}</span>'

    def value(self, *path: str | int) -> str:
        """Any plain JSON value: a number (``d`` or ``g``), a string, true/false or none."""
        value = self.get(*path)
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "none"
        if isinstance(value, int):
            return self.number(*path, fmt="d")
        if isinstance(value, float):
            return self.number(*path, fmt="g")
        return self.text(*path)

    def interval(self, *path: str | int, fmt: str = ".3f") -> str:
        if not isinstance(self.get(*path), list):
            return "&ndash;"
        return (
            f'<span class="iv">{self.number(*path, 0, fmt=fmt)}&ndash;{self.number(*path, 1, fmt=fmt)}</span>'
        )

    @property
    def passed(self) -> bool:
        return bool(self.get("quality_gate", "passed"))

    @property
    def has_served(self) -> bool:
        return isinstance(self.get("reference", "served"), dict)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def na(text: str = NA) -> str:
    """An HTML element saying that a value is missing."""
    return f'<span class="na">{html.escape(text)}</span>'


def matrix_panels(page: Page) -> list[tuple[str, tuple[str, ...]]]:
    """(title, path in metrics.json) of each confusion matrix the version has, in the order they are shown."""
    panels = [("held-out rows", ("held_out",)), ("reference set, this version", ("reference", "candidate"))]
    if page.has_served:
        panels.append(("reference set, served model", ("reference", "served")))
    return panels
