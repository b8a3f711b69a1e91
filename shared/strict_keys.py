"""Unknown keys in a configuration document, named by their path with a likely meant key.

Used by the configuration file (:mod:`shared.config`) and pipeline definitions
(:mod:`shared.pipelines`), so that a misspelt key is never silently ignored.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


def key_path(parent: str, key: object) -> str:
    """``parent.key``; list positions as ``parent[3]``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def unknown_key(parent: str, key: object, known: Iterable[str]) -> str:
    """``dicom.scp.reject-unknown-source: unknown key; did you mean reject-unknown-sources?``"""
    where = key_path(parent, key)
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.7)
    if close:
        return f"{where}: unknown key; did you mean {close[0]}?"
    return f"{where}: unknown key"


def unknown_keys(data: Mapping[Any, Any], known: Iterable[str], parent: str = "") -> list[str]:
    """A message for each key of ``data`` that is not in ``known``, in document order."""
    names = set(known)
    return [unknown_key(parent, key, names) for key in data if key not in names]
