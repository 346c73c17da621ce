# secrets-sidecar: a small non-root image with the runtime dependencies only (no dev extra: no
# OpenBao binary, no pytest, no compilers, no pip cache). Build: `make image`.
#
# BASE_IMAGE defaults to the official slim Python image; the tests pass a base made locally
# (no registry is reachable there). Both stages must use the same base: the venv links to its
# Python.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# binutils, for `strip`, in this stage only: the runtime stage copies the venv alone.
# hadolint ignore=DL3008
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# A wheel of the project (sidecar.dev is left out of it), installed with its dependencies into
# a venv that the runtime stage copies whole: no pip or setuptools, no C sources, shared objects
# without their debug symbols (uvloop's alone is 13.6 MB with them, 1.6 MB without); bytecode
# is compiled here, since the runtime filesystem is read-only.
RUN python3 -m venv /opt/sidecar \
 && /opt/sidecar/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/sidecar/bin/pip uninstall --yes --disable-pip-version-check setuptools pip \
 && find /opt/sidecar -depth \( -name '*.c' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.h' \
      -o -name '*.pyi' \) -delete \
 && find /opt/sidecar -name '*.so' -exec strip --strip-unneeded {} + \
 && python3 -m compileall -q /opt/sidecar

FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
LABEL org.opencontainers.image.title="secrets-sidecar" \
      org.opencontainers.image.description="Serves an application's secrets on localhost, cached by intent, in front of Vault or OpenBao" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/secrets-sidecar/secrets-sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/sidecar /opt/sidecar
# A fixed numeric user and group (Kubernetes' runAsNonRoot can check a number, not a name);
# it writes only to the volumes mounted for tokens, the snapshot and the audit log.
USER 10001:10001
STOPSIGNAL SIGTERM
# The config comes from SIDECAR_CONFIG or `--config`; probes are Kubernetes' job (no HEALTHCHECK).
ENTRYPOINT ["sidecar", "run"]
