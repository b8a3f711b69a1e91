"""The served OpenAPI document, and the copy kept in the repository (docs/openapi.json).

Regenerate the copy after changing the API::

    .venv/bin/python -m services.config_api.openapi docs/openapi.json

tests/unit/test_config_api_openapi.py fails while the two differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from services.config_api.app import create_app
from services.config_api.settings import ConfigApiSettings
from shared.config import SeriesflowConfig
from shared.store import ObjectStore


def openapi_document() -> dict[str, Any]:
    """The document /openapi.json serves (building the app contacts nothing)."""
    settings = ConfigApiSettings(config=None, api_token=None, api_tokens=None)
    app = create_app(settings, ObjectStore(settings), None, SeriesflowConfig())
    return app.openapi()


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m services.config_api.openapi docs/openapi.json")
    Path(argv[0]).write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
