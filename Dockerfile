# syntax=docker/dockerfile:1
# flyte-pullsecrets-webhook: mutating admission webhook injecting imagePullSecrets into Flyte pods.
#
#   docker build -t flyte-pullsecrets-webhook:$(python -c 'import webhook; print(webhook.__version__)') .
#
# Stage 1 builds the wheel and collects the wheels of its dependencies; stage 2 installs them into a
# slim runtime with no compilers and no pip cache, and runs as a fixed non-root UID.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN pip install --no-cache-dir "build==1.6.1"
COPY pyproject.toml README.md ./
COPY webhook ./webhook
RUN python -m build --wheel --outdir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/flyte_pullsecrets_webhook-*.whl

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="flyte-pullsecrets-webhook" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that injects registry-specific imagePullSecrets into Flyte pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Install from the builder's wheels only (no index, no compilers), then drop pip itself.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/flyte_pullsecrets_webhook-*.whl \
 && pip uninstall --yes pip setuptools wheel \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
EXPOSE 8443
ENTRYPOINT ["pullsecrets-webhook"]
CMD ["serve", "--config", "/etc/pullsecrets-webhook/rules.yaml", "--host", "0.0.0.0", "--port", "8443", "--cert-dir", "/certs"]
