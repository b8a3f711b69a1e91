"""pydicom, imported without the HTTP client it only needs to download example files.

pydicom imports ``requests`` (and with it urllib3, charset_normalizer, idna, ...) when it is
imported, only to download its example data files (``pydicom.data``), which seriesflow
never does: about 0.1 s of CPU time at every ``seriesflow process`` start. Importing this
module first (``seriesflow.cli`` does) imports pydicom with ``requests`` hidden, so pydicom
records that it is absent (a download would use ``urllib`` instead) and ``requests`` is not
loaded. Afterwards ``import requests`` works as usual for any code that uses it.
"""

from __future__ import annotations

import sys

if "pydicom" not in sys.modules and "requests" not in sys.modules:
    sys.modules["requests"] = None  # type: ignore[assignment]  # makes `import requests` fail
    try:
        import pydicom  # noqa: F401
    finally:
        del sys.modules["requests"]
