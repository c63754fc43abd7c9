#!/usr/bin/env bash
# The GPU benchmark in one command: demo MLP + ResNet-50 (random weights), every path, one results folder.
# Sized for one H100 within 8 minutes (a hard stop at 470 s for the benchmark itself). Usage:
#   benchmarks/gpu_run.sh [results folder] [extra `python -m benchmarks` options]
# With an offline bundle (benchmarks/gpu_bundle.py, carried as .gpu-bundle) it first installs it into
# .gpu-venv (benchmarks/gpu_install.sh) and runs there; when $OUT is set (the device tool's return folder) the
# results folder is also packed into $OUT/<name>.tar.gz, since only files two folders deep come back.
# Without a bundle it needs what `make venv` installs and the Debian packages wrk, libb64-0d, libpython3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
RESULTS=${1:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
shift || true
BUNDLE=${GPU_BUNDLE:-.gpu-bundle}
if [ -f "$BUNDLE/manifest.json" ]; then
  benchmarks/gpu_install.sh "$BUNDLE" .gpu-venv
  PY=.gpu-venv/bin/python
  export PATH="$PWD/.gpu-venv/bin:$PATH"
  echo "gpu_run: install took $(($(date +%s) - START)) s"
else
  PY=${PYTHON:-.venv/bin/python}
  missing=""
  command -v wrk >/dev/null || missing="$missing wrk"
  dpkg -s libb64-0d >/dev/null 2>&1 || missing="$missing libb64-0d"
  if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages:$missing"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing) ||
      echo "install failed: those paths will report 'not available'"
  fi
fi
# wrk's LuaJIT, when it came in the bundle (a bare machine lacks it).
if [ -d .gpu-venv/extra/lib/wrk ]; then
  export LD_LIBRARY_PATH=$PWD/.gpu-venv/extra/lib/wrk${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
mkdir -p "$RESULTS"
BENCH_START=$(date +%s)
code=0
timeout 470 "$PY" -m ${GPU_BENCH_MODULE:-benchmarks.gpu} --out "$RESULTS" "$@" 2>&1 | tee "$RESULTS/run.log" || code=$?
echo "gpu_run: benchmark took $(($(date +%s) - BENCH_START)) s (exit $code); total $(($(date +%s) - START)) s"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  tar -czf "$OUT/$(basename "$RESULTS").tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  echo "gpu_run: packed $OUT/$(basename "$RESULTS").tar.gz"
fi
echo "results: $RESULTS"
exit "$code"
