#!/usr/bin/env python3
"""Exit 0 when Orthanc answers GET /changes?last with the configured credentials."""

import base64
import json
import os
import sys
import urllib.request

request = urllib.request.Request("http://127.0.0.1:8042/changes?last")
users = json.loads(os.environ.get("ORTHANC__REGISTERED_USERS", "{}") or "{}")
if users:
    user, password = next(iter(users.items()))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
try:
    with urllib.request.urlopen(request, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
