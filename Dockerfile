# syntax=docker/dockerfile:1.7
# One image for web, worker and beat. Build args pick the torch build:
#   CPU (default):  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   CUDA workers:   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controlplane controlplane
COPY runs runs
COPY workers workers
COPY accounts accounts
COPY ops ops
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" .

# Front-end libraries come from npm (pinned in package-lock.json), never from a CDN.
FROM node:20-bookworm-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# PYTHONPATH: every process imports the application from /app (the wheel in /opt/venv carries
# the dependencies), whatever its working directory or entry point.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONTROLPLANE_DATA_DIR=/data \
    STATIC_ROOT=/app/staticfiles
RUN groupadd --system --gid 10001 controlplane \
    && useradd --system --uid 10001 --gid controlplane --home-dir /app --shell /usr/sbin/nologin controlplane \
    && mkdir -p /data /app && chown controlplane:controlplane /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=controlplane:controlplane . .
COPY --from=assets /src/node_modules/uplot/dist/uPlot.esm.js /src/node_modules/uplot/dist/uPlot.min.css \
    /src/node_modules/uplot/LICENSE /app/static/vendor/uplot/
RUN DATABASE_URL=sqlite:////tmp/collect.sqlite3 SECRET_KEY=collectstatic-only-not-a-real-secret-key-000 \
    python manage.py collectstatic --noinput -v0 && rm -f /tmp/collect.sqlite3
USER controlplane
# 8000: web (UI, API, websockets, /metrics); 9808: a worker's metrics (CONTROLPLANE_WORKER_METRICS_PORT).
EXPOSE 8000 9808
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["uvicorn", "controlplane.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--no-access-log"]
