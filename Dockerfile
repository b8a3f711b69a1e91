# One image for every seriesflow component. The entrypoint is the `seriesflow` command; the
# default command is operator mode, a drop-in for the Clara DICOM Parser operator:
#
#   docker build -t seriesflow:0.1.0 .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/in:/input:ro" -v "$PWD/out:/output" seriesflow:0.1.0
#
# (--user: write the results as yourself into a folder you own; the image's own user is
# uid/gid 10001.)
#
# Other components are other subcommands of the same image (`seriesflow select ...`, and the
# services). Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 before). No
# `# syntax=` line: BuildKit's built-in frontend handles this file, so building needs no
# registry beyond the base image.
#
# Behind a TLS-inspecting proxy, pass its CA certificate(s) (PEM) for pip's HTTPS:
#
#   docker build --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)" ...
#
# They are used by the builder stage only and do not end up in the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: wheels for the project and its runtime dependencies (no dev extras).
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Optional: PEM certificates pip should trust besides its own bundle (TLS-inspecting proxies).
ARG EXTRA_CA_CERTS=""

WORKDIR /src

# pip's CA bundle, plus EXTRA_CA_CERTS when given.
RUN python -c "import pip._vendor.certifi as c, shutil; shutil.copy(c.where(), '/tmp/pip-ca.pem')" \
    && if [ -n "$EXTRA_CA_CERTS" ]; then printf '%s\n' "$EXTRA_CA_CERTS" >> /tmp/pip-ca.pem; fi
ENV PIP_CERT=/tmp/pip-ca.pem

# Dependencies first, from pyproject.toml alone, so that editing the code does not rebuild
# them. Every dependency ships binary wheels for linux/amd64 and linux/arm64, so this stage
# needs no compiler.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels --requirement /tmp/requirements.txt

# Then the project itself (what .dockerignore lets through).
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# runtime: the wheels installed into a clean interpreter, run as an unprivileged user.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="seriesflow" \
      org.opencontainers.image.description="Receive DICOM studies, convert series into volumes (MetaImage, NIfTI), select series with declarative rules, send results on. Drop-in for the Clara DICOM Parser and Series Selector operators." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# uid/gid 10001: numeric, so Kubernetes' runAsNonRoot can verify it. /input and /output, and
# the receiver's spool /var/lib/seriesflow/spool (SERIESFLOW_SPOOL_DIR), exist and belong to
# that user, so named volumes mounted there start out writable by it.
RUN groupadd --gid 10001 seriesflow \
    && useradd --uid 10001 --gid 10001 --home-dir /home/seriesflow --create-home \
        --shell /usr/sbin/nologin seriesflow \
    && install -d -o 10001 -g 10001 -m 0755 /input /output \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/seriesflow /var/lib/seriesflow/spool

# The wheels are bind-mounted from the builder, so they never become a layer of this image.
# Installing compiles the bytecode once, here, which is why PYTHONDONTWRITEBYTECODE is safe
# (and a read-only root filesystem works). The imports check that every native library
# (the pylibjpeg decoders) loads on this base image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels seriesflow \
    && python -c "import libjpeg, openjpeg, rle, pydicom, pynetdicom, seriesflow.cli" \
    && seriesflow --help > /dev/null

USER 10001:10001
WORKDIR /home/seriesflow

# The receiver's local spool (docs/receiver.md, "The spool"): mount a persistent volume here.
ENV SERIESFLOW_SPOOL_DIR=/var/lib/seriesflow/spool

VOLUME ["/input", "/output"]

# Python is PID 1 here and installs no SIGTERM handler, and PID 1 ignores signals it does not
# handle, so `docker stop` / pod deletion would wait out the grace period and then SIGKILL.
# Python does handle SIGINT (KeyboardInterrupt), so stop with that.
STOPSIGNAL SIGINT

# No HEALTHCHECK: the default command is a batch job that exits when it is done, so "healthy"
# has no meaning for it, and one image-wide check cannot fit every component. Long-running
# components get their own checks where they are deployed (docker-compose.yml, deploy/).

ENTRYPOINT ["seriesflow"]
CMD ["process", "--input", "/input", "--output", "/output"]
