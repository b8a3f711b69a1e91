#!/usr/bin/env bash
# docker compose up, for real: builds the images, starts the whole stack of docker-compose.yml
# with the README's commands, runs the acceptance suite against it (tests/acceptance, marker
# `acceptance`), and takes everything down again. scripts/test.sh runs it in CI.
#
#   bash scripts/compose-ci.sh [PYTEST ARGS...]
#
# Uses a private Docker engine (scripts/docker-engine.sh) and, since no container registry is
# reachable from CI, stand-in images built from Debian packages and PyPI
# (deploy/ci/docker-compose.ci.yml). The engine's data (images, build cache) stays in
# SERIESFLOW_CI_ROOT (default /var/lib/seriesflow-ci) for the next run; a run with an empty
# one builds everything (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-engine.sh
source scripts/docker-engine.sh

VENV="$PWD/.venv/bin"
export COMPOSE_FILE="docker-compose.yml:deploy/ci/docker-compose.ci.yml"
export COMPOSE_PROJECT_NAME=seriesflow
# As in the README: a token for the config API, and RabbitMQ's host port moved when one already
# listens on 5672 (this machine's own, which the integration tests use).
SERIESFLOW_API_TOKEN="${SERIESFLOW_API_TOKEN:-$(openssl rand -hex 32)}"
export SERIESFLOW_API_TOKEN
if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  export RABBITMQ_PORT="${RABBITMQ_PORT:-5673}"
fi

started=0
cleanup() {
  local status=$?
  if [ "$started" = 1 ]; then
    if [ "$status" != 0 ]; then
      echo "compose-ci: the stack at the time of failure:" >&2
      "$DOCKER" compose ps -a >&2 || true
      "$DOCKER" compose logs --no-color --tail 60 >&2 || true
    fi
    "$DOCKER" compose --profile operator down --volumes --remove-orphans >&2 || true
  fi
  if [ -n "${ENGINE_PID:-}" ]; then
    # Keep the cache from growing run after run: images replaced by this run's builds go, and
    # the build cache is trimmed to a few GB.
    "$DOCKER" image prune -f >/dev/null 2>&1 || true
    "$DOCKER" builder prune -f --keep-storage 3gb >/dev/null 2>&1 || true
  fi
  engine_stop
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SECONDS=0
engine_start
compose_install
# The unit suite's check of docker-compose.yml with `docker compose config` skips where
# Compose is not installed yet, as on a fresh machine, where pytest runs before this stage
# installs it. Here it is installed: the check runs, and a skip is a failure.
SERIESFLOW_REQUIRE_COMPOSE=1 "$VENV/pytest" -q -p no:cacheprovider \
  "tests/unit/test_deploy_files.py::test_docker_compose_accepts_the_file"
images_build
echo "compose-ci: images of the stand-ins ready after ${SECONDS} s"

# The README's commands (with the CI override in COMPOSE_FILE and the stand-in Python image).
image_build -t seriesflow:0.1.0 --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" .
echo "compose-ci: seriesflow:0.1.0 built after ${SECONDS} s"
"$DOCKER" compose config --quiet
started=1
# Whatever an interrupted run left behind (the engine restarts `unless-stopped` containers).
"$DOCKER" compose --profile operator down --volumes --remove-orphans >/dev/null 2>&1 || true
"$DOCKER" compose up -d --wait --wait-timeout 300
echo "compose-ci: the stack is up and healthy after ${SECONDS} s"
"$DOCKER" compose ps

set +e
SERIESFLOW_ACCEPTANCE_TARGET=compose "$VENV/pytest" -m acceptance tests/acceptance "$@"
status=$?
set -e
echo "compose-ci: acceptance suite finished after ${SECONDS} s (pytest exit status $status)"
if [ "$status" -eq 5 ]; then
  echo "compose-ci: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
