#!/usr/bin/env bash
# Sets everything up and runs every check CI runs: ruff, mypy and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# The environment's tools are called by path: .venv/bin also holds pynetdicom's scripts
# named storescu, storescp and echoscu, which must not shadow dcmtk's.
VENV="$PWD/.venv/bin"
export SERIESFLOW_TESTDATA="${SERIESFLOW_TESTDATA:-$(cd .. && pwd)/shared/testdata}"

echo "== ruff"
"$VENV/ruff" check .
"$VENV/ruff" format --check .
echo "== mypy"
"$VENV/mypy"
echo "== pytest"
set +e
"$VENV/pytest" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
