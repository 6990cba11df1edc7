# syntax=docker/dockerfile:1.7
# One image for web, worker and beat: the controlplane wheel installed into /opt/venv; no source
# tree in the image. Build args pick the torch build:
#   CPU (default):  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   CUDA workers:   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                   --build-arg GPU_PACKAGES=nvidia-ml-py==13.615.71
# (the `gpu` profile of docker-compose.yml builds that variant as controlplane-cuda).
ARG PYTHON_VERSION=3.11

# Front-end libraries come from npm (pinned in package-lock.json), never from a CDN.
FROM node:20-bookworm-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# NVML bindings for the CUDA variant: device discovery (fleet.inventory), GPU metrics (ops.gpu).
ARG GPU_PACKAGES=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The pinned dependencies first, from pyproject.toml alone: this layer (torch is most of the
# image) is rebuilt only when the pins change, not on every change to the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/requirements.txt ${GPU_PACKAGES}
# The wheel: every app with its migrations and commands, templates/ and static/ with the vendor
# files the pages load (the same copy `./dev setup` makes; setup.py refuses to build without them).
COPY . .
COPY --from=assets /src/node_modules/uplot/dist/uPlot.esm.js /src/node_modules/uplot/dist/uPlot.min.css \
    /src/node_modules/uplot/LICENSE static/vendor/uplot/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# No PYTHONPATH: every process imports the application from the installed wheel, whatever its
# working directory or entry point (controlplane-manage, celery, uvicorn).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=controlplane.settings \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CONTROLPLANE_DATA_DIR=/data \
    STATIC_ROOT=/app/staticfiles
RUN groupadd --system --gid 10001 controlplane \
    && useradd --system --uid 10001 --gid controlplane --home-dir /app --shell /usr/sbin/nologin controlplane \
    && mkdir -p /data /app && chown controlplane:controlplane /data
COPY --from=build /opt/venv /opt/venv
# The wheel alone (its dependencies are already in /opt/venv); pip check fails the build if the
# two ever disagree.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-deps --no-index --disable-pip-version-check --no-cache-dir /wheels/controlplane-*.whl \
    && pip check
WORKDIR /app
# manage.py only (it imports everything from the wheel), so `python manage.py migrate` in
# docker-compose.yml, deploy/k8s and docs/operations.md works as before; `controlplane-manage` is the same.
COPY manage.py ./
RUN DATABASE_URL=sqlite:////tmp/collect.sqlite3 SECRET_KEY=collectstatic-only-not-a-real-secret-key-000 \
    controlplane-manage collectstatic --noinput -v0 && rm -f /tmp/collect.sqlite3
USER controlplane
# 8000: web (UI, API, websockets, /metrics); 9808: a worker's metrics (CONTROLPLANE_WORKER_METRICS_PORT).
EXPOSE 8000 9808
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["uvicorn", "controlplane.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers", "--no-access-log"]
