#!/usr/bin/env bash
# The CUDA smoke (scripts/gpu_smoke.py): tinygpt fp32 and bf16 on cuda, and an NCCL all-reduce
# across the GPUs under torchrun. Run it on a GPU host from the repository root of a
# checkout whose venv has the CUDA torch wheel (`pip install --extra-index-url
# https://download.pytorch.org/whl/cu128 -e .`). Exit 2: no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m scripts.gpu_smoke "$@"
