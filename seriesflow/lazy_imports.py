"""pydicom, imported without the HTTP client and the imaging library seriesflow does not use.

pydicom imports, when it is imported:

- ``requests`` (and with it urllib3, charset_normalizer, idna, ...), only to download its
  example data files (``pydicom.data``), which seriesflow never does: about 0.1 s of CPU
  time at every ``seriesflow process`` start;
- Pillow, when it is installed, to offer it as a fallback JPEG and JPEG 2000 decoder and to
  apply ICC profiles: 8 ms. Pillow is not a seriesflow dependency (the pylibjpeg plugins
  decode every compressed transfer syntax, first); only a test tool, dicomweb-client, brings
  it into development installs, and the images the project ships do not have it.

Importing this module first (``seriesflow.cli`` does) imports pydicom with both hidden, so
pydicom records that they are absent, and a development install decodes pixel data as
an installed seriesflow does. Afterwards ``import requests`` and ``import PIL`` work as
usual for any code that uses them.
"""

from __future__ import annotations

import sys

HIDDEN_FROM_PYDICOM = ("requests", "PIL")


def _import_pydicom_without(names: tuple[str, ...]) -> None:
    """Import pydicom with ``names`` hidden (those not imported already), then unhide them."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        import pydicom  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


if "pydicom" not in sys.modules:
    _import_pydicom_without(HIDDEN_FROM_PYDICOM)
