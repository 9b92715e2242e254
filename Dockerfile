# The dynamo-health-sidecar image. Build from the repository root (Docker with BuildKit, or Podman):
#   docker build -t dynamo-health-sidecar:0.1.0 .
# Pin the base exactly with a digest: --build-arg BASE=python:3.11-slim-bookworm@sha256:<digest>
# Any Debian-like base with python3 (3.11+), its venv module and useradd works, e.g. one built with
# debootstrap (tests/container does that). Behind a TLS-intercepting proxy, give pip its CA bundle
# as a build secret; it is mounted for the install step only and is in no layer of the image:
#   --secret id=pip-cert,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE=python:3.11-slim-bookworm

# Build stage: installs the package and its dependencies (binary wheels) into a venv.
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# python3, not python: the python images have both, a plain Debian base only python3.
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar/ ./sidecar/
# The venv keeps its compiled bytecode: the root filesystem is read-only at run time.
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
 && /opt/venv/bin/pip install --no-cache-dir ".[kube]" \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# Final stage: the same base, the venv, a non-root user; no build tools, sources or caches.
FROM ${BASE}
LABEL org.opencontainers.image.title="dynamo-health-sidecar" \
      org.opencontainers.image.description="Answers the kubelet's probes for LLM inference workers, speaking NVIDIA Dynamo's health protocol" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# UID and GID 65532 are the chart's runAsUser, runAsGroup and fsGroup. The socket directory exists
# for `docker run`; in Kubernetes the chart mounts an in-memory emptyDir there.
RUN groupadd --system --gid 65532 sidecar \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sidecar \
 && install -d -o 65532 -g 65532 -m 0770 /var/run/dynamo
COPY --from=build /opt/venv /opt/venv
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["dynamo-health-sidecar"]
CMD ["serve"]
