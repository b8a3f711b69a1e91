"""The config API's names for the configuration store (:mod:`shared.configstore`).

The store, its checks and its errors live in ``shared/`` because every service reads the
configuration; the API answers a :class:`ConfigError` with its ``status``.
"""

from __future__ import annotations

from shared.configstore import (
    KINDS,
    AuditRecord,
    Kind,
    StoredObject,
    audit_key,
    check_name,
    conflict,
    invalid,
    normalize_spec,
    not_found,
)
from shared.configstore import ConfigError as ApiError
from shared.configstore import ConfigStore as ConfigRepository

__all__ = [
    "KINDS",
    "ApiError",
    "AuditRecord",
    "ConfigRepository",
    "Kind",
    "StoredObject",
    "audit_key",
    "check_name",
    "conflict",
    "invalid",
    "normalize_spec",
    "not_found",
]
