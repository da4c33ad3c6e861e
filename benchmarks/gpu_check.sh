#!/usr/bin/env bash
# The GPU check, on one CUDA machine, in a few minutes: every test marked gpu (the GPU path of a
# trial, the evaluation pool and lm-eval on CUDA against CPU values), then the training
# throughput and MFU of benchmarks/gpu_check.py. The last line is gpu_check.py's JSON object.
#   benchmarks/gpu_check.sh                       (.venv, made by scripts/setup if missing)
#   PYTHON=python3 benchmarks/gpu_check.sh        (a Python that has a CUDA build of torch)
# scripts/setup installs torch's CPU build; a GPU machine needs an environment with a CUDA
# build and raysoup's other requirements (ray, deepspeed, peft, mergekit, ...).
# Exits non-zero when a test fails (the throughput part still runs). Record what it prints in
# docs/benchmarks.md with the machine it ran on.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null || scripts/setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())'
"$PYTHON" -m pytest -m gpu -q -rs --durations=0 tests/
tests=$?
"$PYTHON" benchmarks/gpu_check.py || exit $?
exit $tests
