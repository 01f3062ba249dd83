"""Module-name patterns for per-layer options: an exact name, a glob, or ``re:`` and a regex."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

__all__ = ["matches", "matches_any", "first_match"]


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` matches ``pattern`` (exact, glob such as ``layer4.*``, or ``re:…``)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(matches(name, p) for p in patterns)


def first_match(names: Iterable[str], patterns: Iterable[str]) -> str | None:
    """The first pattern (in order) that matches any of ``names``."""
    names = list(names)
    for p in patterns:
        if any(matches(n, p) for n in names):
            return p
    return None
