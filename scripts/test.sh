#!/usr/bin/env bash
# Sets everything up and runs every check CI runs: ruff, mypy, the whole test suite (the
# acceptance suite in tests/acceptance against `seriesflow up` started by scripts/stack.sh
# included), then the acceptance suite again against the real compose stack
# (scripts/compose-ci.sh: private Docker engine, images built, `docker compose up --wait`).
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/unit -q   # pytest with these arguments only, no compose stage
#   SERIESFLOW_COMPOSE_TESTS=0 bash scripts/test.sh   # everything but the compose stage
set -euo pipefail
cd "$(dirname "$0")/.."
compose_stage=1
if [ "$#" -gt 0 ] || [ "${SERIESFLOW_COMPOSE_TESTS:-1}" = 0 ]; then
  compose_stage=0
fi
if [ "$compose_stage" = 1 ]; then
  bash scripts/setup.sh --docker
else
  bash scripts/setup.sh
fi
bash scripts/services.sh
# The environment's tools are called by path: .venv/bin also holds pynetdicom's scripts
# named storescu, storescp and echoscu, which must not shadow dcmtk's.
VENV="$PWD/.venv/bin"
export SERIESFLOW_TESTDATA="${SERIESFLOW_TESTDATA:-$(cd .. && pwd)/shared/testdata}"

# Every stage runs even when one before it failed, so one run shows every failure; the exit
# status is the first failure's.
status=0
stage() {  # stage NAME COMMAND...
  local name=$1 result
  shift
  echo "== $name"
  set +e
  "$@"
  result=$?
  set -e
  if [ "$name" = pytest ] && [ "$result" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    result=1
  fi
  if [ "$result" -ne 0 ]; then
    echo "== $name failed (exit status $result)" >&2
    [ "$status" -ne 0 ] || status=$result
  fi
}
stage "ruff check" "$VENV/ruff" check .
stage "ruff format" "$VENV/ruff" format --check .
stage mypy "$VENV/mypy"
stage pytest "$VENV/pytest" "$@"
if [ "$compose_stage" = 1 ]; then
  stage "compose: the acceptance suite against docker compose up" bash scripts/compose-ci.sh
fi
exit "$status"
