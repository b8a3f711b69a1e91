#!/usr/bin/env python3
"""Write an Orthanc configuration from ORTHANC__* variables, then run Orthanc with it."""

import json
import os
from pathlib import Path

config: dict[str, object] = {
    "Name": "orthanc",
    "StorageDirectory": "/var/lib/orthanc/db",
    "IndexDirectory": "/var/lib/orthanc/db",
    "RemoteAccessAllowed": True,
    "HttpPort": 8042,
    "DicomPort": 4242,
    "Plugins": [],
}
for key, value in os.environ.items():
    if not key.startswith("ORTHANC__"):
        continue
    name = "".join(part.capitalize() for part in key[len("ORTHANC__") :].split("_"))
    try:
        config[name] = json.loads(value)
    except ValueError:
        config[name] = value
path = Path("/tmp/orthanc.json")
path.write_text(json.dumps(config))
os.execvp("Orthanc", ["Orthanc", str(path)])
