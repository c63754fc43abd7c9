#!/usr/bin/env bash
# Install the offline bundle (benchmarks/gpu_bundle.py) on a machine without network: run from the repo root.
#   benchmarks/gpu_install.sh [bundle folder (default .gpu-bundle)] [venv (default .gpu-venv)]
# Why each step:
# - The venv reuses the machine's torch. Its python3 is itself a venv (/opt/torch/.venv), and a venv made
#   from a venv sees the *base* interpreter's site-packages, not the parent venv's, even with
#   --system-site-packages; so a .pth file adds the parent's site-packages after the venv's own.
# - Wheels (unpacked from wheels.tar.xz into a temporary folder) are installed with --no-deps: the
#   wheelhouse holds exactly what the machine lacks (and protobuf<5 for tritonclient, numpy<2 for
#   tritonclient's as_numpy), so no resolver runs against packages whose versions we cannot know here.
# - The venv's site-packages come before the machine's on sys.path, so its numpy 1.26 shadows the machine's
#   numpy 2 for the benchmark, the proxy and the Triton stub alike (the stub runs the venv's python3).
# - The project goes in as a .pth line (the repository root), the same as an editable install, with no build.
# - The trimmed Triton is unpacked into the venv's site-packages, where nexusml/triton/server.py looks for it
#   (importlib finds the one-line `pytriton` package; the binaries' RPATHs find nvidia_pytriton.libs).
# - The 3.12 stub needs libpython3.12.so.1.0: the machine's if it has one, else the bundled copy.
# - wrk comes with its LuaJIT. perf_analyzer needs libcudart.so.12 and libb64.so.0d, which a bare machine
#   lacks: both are linked to nvidia_pytriton.libs' copies in nvidia/cuda_runtime/lib, the folder
#   benchmarks/loadgen.py puts on perf_analyzer's LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-.gpu-bundle}
VENV=${2:-.gpu-venv}
BASE=${BASE_PYTHON:-python3}
step() { echo "gpu_install: $1: $(($(date +%s%N) / 1000000 - T0)) ms"; T0=$(($(date +%s%N) / 1000000)); }
T0=$(($(date +%s%N) / 1000000))
test -f "$BUNDLE/manifest.json" || { echo "gpu_install: no bundle at $BUNDLE (python -m benchmarks.gpu_bundle)"; exit 2; }

rm -rf "$VENV"
"$BASE" -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$BASE" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() if "site-packages" in p))' \
  >"$SITE/_machine_site.pth"
pwd >"$SITE/_nexusml_repo.pth"
step venv

WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
tar -xJf "$BUNDLE/wheels.tar.xz" -C "$WHEELS"
"$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check "$WHEELS"/wheels/*.whl
step wheels

tar -xJf "$BUNDLE/triton.tar.xz" -C "$SITE" --strip-components=1 site
mkdir -p "$VENV/extra"
tar -xJf "$BUNDLE/triton.tar.xz" -C "$VENV/extra" --strip-components=1 extra
LIBDIR=$("$BASE" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
if ldconfig -p | grep -q 'libpython3\.12\.so\.1\.0'; then
  echo "gpu_install: the stub uses this machine's libpython3.12"
elif test -e "$LIBDIR/libpython3.12.so.1.0"; then
  echo "gpu_install: the stub uses $LIBDIR/libpython3.12.so.1.0 (outside the loader's path: linked in)"
  ln -sf "$LIBDIR/libpython3.12.so.1.0" "$SITE/nvidia_pytriton.libs/"
elif test -e "$VENV/extra/lib/libpython3.12.so.1.0"; then
  echo "gpu_install: no libpython3.12 on this machine: the stub uses the bundled one"
  cp "$VENV/extra/lib/libpython3.12.so.1.0" "$SITE/nvidia_pytriton.libs/"
else
  echo "gpu_install: WARNING no libpython3.12.so.1.0 here: Triton paths will fail (rebuild with --with-libpython)"
fi
mkdir -p "$SITE/nvidia/cuda_runtime/lib"
ln -sf "$(ls "$SITE"/nvidia_pytriton.libs/libcudart-*.so.12*)" "$SITE/nvidia/cuda_runtime/lib/libcudart.so.12"
ln -sf "$(ls "$SITE"/nvidia_pytriton.libs/libb64-*.so.0d)" "$SITE/nvidia/cuda_runtime/lib/libb64.so.0d"
step triton

if ! command -v wrk >/dev/null && test -x "$VENV/extra/bin/wrk"; then
  ln -sf "$PWD/$VENV/extra/bin/wrk" "$VENV/bin/wrk"
fi
step wrk

"$PY" -m pip check || echo "gpu_install: pip check found the conflicts above (machine versions); going on"
"$PY" - <<'EOF'
"""Fail now, not minutes into the run, if an import of the benchmark path is broken."""
import importlib

names = ("torch", "numpy", "tritonclient.grpc", "tritonclient.http", "boto3", "moto.server", "moto.s3", "moto.iam", "locust")
for name in (*names, "proxy", "benchmarks.run"):
    module = importlib.import_module(name)
    print(f"gpu_install: import {name}: {getattr(module, '__version__', 'ok')}")
import numpy
import torch

assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__} from {numpy.__file__}: the bundle's 1.26 lost"
assert torch.from_numpy(numpy.arange(4.0)).sum().item() == 6.0
from nexusml.triton.server import TritonDistribution

print(f"gpu_install: numpy {numpy.__version__} at {numpy.__file__}; torch's numpy bridge works")
print(f"gpu_install: tritonserver at {TritonDistribution.find().binary}")
EOF
step check
