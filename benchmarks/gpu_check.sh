#!/usr/bin/env bash
# The GPU check: the GPU tests and the GPU path of a trial, on one CUDA machine, in a few minutes.
#   benchmarks/gpu_check.sh            (sets up .venv with scripts/setup when it is missing)
# Prints the device, then the GPU tests' results with their durations; exits non-zero when any
# fails. Record what it prints in docs/benchmarks.md with the machine it ran on.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())'
# Every test marked gpu (they skip without CUDA, so a skip here means the GPU was not seen).
.venv/bin/python -m pytest -m gpu -q -rs --durations=0 tests/
