#!/usr/bin/env bash
# The GPU benchmark in one command: demo MLP + ResNet-50 (random weights), every path, one results folder.
# Sized for one H100 within 8 minutes (a hard stop at 470 s). Usage:
#   benchmarks/gpu_run.sh [results folder] [extra `python -m benchmarks` options]
# Needs what `make venv` installs (torch with CUDA on a GPU machine, nvidia-pytriton, tritonclient with
# perf_analyzer, nvidia-cuda-runtime-cu12, locust) and the Debian packages wrk, libb64-0d, libpython3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
shift || true
missing=""
command -v wrk >/dev/null || missing="$missing wrk"
dpkg -s libb64-0d >/dev/null 2>&1 || missing="$missing libb64-0d"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
  echo "installing Debian packages:$missing"
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing) || echo "install failed: those paths will report 'not available'"
fi
mkdir -p "$OUT"
timeout 470 "$PY" -m benchmarks.gpu --out "$OUT" "$@"
echo "results: $OUT"
