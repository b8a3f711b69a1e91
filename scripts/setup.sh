#!/usr/bin/env bash
# Installs everything seriesflow needs on a fresh Debian machine: the DICOM tools used by
# tests and benchmarks (Debian packages) and a virtual environment with the project and its
# development dependencies. Safe to run again: it only installs what is missing.
#
#   bash scripts/setup.sh            # what the tests and operator mode need
#   bash scripts/setup.sh --docker   # also Debian's Docker engine (docker.io) and mmdebstrap,
#                                    # for the compose stack in CI (scripts/compose-ci.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the console tests; python3-venv: Debian's python3 (below) creating the venv
APT_PACKAGES=(dcmtk dcm2niix orthanc rabbitmq-server curl chromium python3-venv)
if [ "${1:-}" = "--docker" ]; then
  APT_PACKAGES+=(docker.io mmdebstrap)
fi
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The interpreter: $PYTHON when set; else Debian's own python3 when it is 3.11 or newer,
# else the first python3 on PATH. Debian builds its python3 with profile-guided
# optimisation and libpython linked into the executable; a version manager's default build
# (pyenv's: a shared libpython, no PGO) ran `seriesflow process` on dcm_qa_nih about 28%
# slower on the same machine. The CI container images use Debian's interpreter too.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON=/usr/bin/python3
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$PYTHON" -m venv .venv
fi
# Re-install only when pyproject.toml changed since the last install.
stamp=.venv/.seriesflow-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing seriesflow and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
# The checkout is installed editable, so nothing compiled its modules' bytecode, and where
# PYTHONDONTWRITEBYTECODE is set (this project's Dockerfile sets it; so do many CI
# machines) Python compiled about 40 of them from source at every start: 0.1 s of CPU time
# for each `seriesflow process`. Compiled here, as pip does when it installs a wheel; a
# module edited later is compiled again in memory (the cache records the source's mtime).
.venv/bin/python -m compileall -q seriesflow shared services >/dev/null
echo "setup: ready (.venv/bin/seriesflow)"
