# syntax=docker/dockerfile:1
# The NexusML data-plane images, from one Dockerfile:
#   runtime (default)  nexus sync (compose `model-sync`, Helm init container), nexus proxy (`proxy`) and
#                      nexus watch (compose `watcher`, Helm container `watcher`)
#   demo               runtime + CPU PyTorch, for `nexus publish-demo` (compose profile `demo`)
#   triton-cpu         a CPU-only Triton 2.51 (the server of nvidia-pytriton 0.7.0 = NGC 24.10) + PyTorch,
#                      a stand-in for nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3 that takes the same
#                      `tritonserver ...` command line (compose TRITON_IMAGE, Helm tritonImage.*)
# Build from the repository root:
#   docker build -f docker/nexus.Dockerfile -t nexusml/dataplane:0.1.0 .
#   docker build -f docker/nexus.Dockerfile --target triton-cpu -t nexusml/tritonserver-cpu:2.51.0 .
# Build arguments: BASE_IMAGE (any Debian-based image with python3 = 3.11, its venv module and libpython3.11),
# TORCH_VERSION / TORCH_INDEX_URL (the CPU PyTorch of `demo` and `triton-cpu`; TORCH_INDEX_URL empty means
# pip's own indexes), and pip's own PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT for builds
# behind a mirror or a TLS-inspecting proxy (unset: PyPI).
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

############################ requirements: the runtime groups of pyproject.toml as a requirements file
# A stage of its own, so that only a change to those groups (not to any other line of pyproject.toml) makes
# the next stage reinstall its dependencies.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml docker/extras.py /tmp/deps/
RUN python3 /tmp/deps/extras.py /tmp/deps/pyproject.toml sync proxy > /tmp/deps/requirements.txt

############################ dependencies: a virtual environment with the runtime dependencies
FROM ${BASE_IMAGE} AS dependencies
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so editing the code does not reinstall them: the `sync` and `proxy` groups (what
# `nexus sync` and `nexus proxy` import; `nexus watch` needs both).
COPY --from=requirements /tmp/deps/requirements.txt /tmp/requirements.txt
RUN pip install --requirement /tmp/requirements.txt

############################ builder: the package on top
FROM dependencies AS builder
# Build arguments are per stage: pip builds the package (its build backend comes from the index).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# .dockerignore lets in only pyproject.toml, README.md, nexusml/, proxy/ and the files under docker/ used here.
COPY . .
# --no-deps: the groups' dependencies are all installed above; the imports below prove it. The demo publisher
# (it needs PyTorch) ships only in the demo image, and the wheel leaves out the test harness (nexusml.testing).
RUN rm nexusml/command/demo.py \
    && pip install --no-deps . \
    && python -I -c "import nexusml.command.cli, nexusml.sync.pipeline, nexusml.updates.watch, proxy.server, tritonclient.grpc" \
    && python -I -c "from importlib.util import find_spec as f; assert not f('nexusml.command.demo') and not f('nexusml.testing')"

############################ demo-builder: adds a CPU build of PyTorch for `nexus publish-demo`
# From `dependencies`, so that editing the code does not reinstall PyTorch.
FROM dependencies AS demo-builder
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# 2.5.x: the PyTorch of the 24.10 Triton image, so the TorchScript file the demo writes loads there.
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install "torch==${TORCH_VERSION}"
COPY . .
RUN pip install --no-deps . \
    && python -I -c "import nexusml.command.cli, nexusml.command.demo, torch"

############################ demo: the control-plane stand-in (compose profile `demo`), one-shot
FROM ${BASE_IMAGE} AS demo
RUN groupadd --system --gid 1000 nexus \
    && useradd --system --uid 1000 --gid nexus --home-dir /home/nexus --create-home --shell /usr/sbin/nologin nexus
COPY --from=demo-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/nexus
USER 1000:1000
# A one-shot job: nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["nexus"]
CMD ["publish-demo"]

############################ triton-builder: Triton 2.51 out of the nvidia-pytriton wheel, laid out as in NGC's image
FROM ${BASE_IMAGE} AS triton-builder
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# The PyTorch the generic model.py runs on. 2.5.x is NGC 24.10's; a demo model must not be newer.
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The model's Python environment: the stub finds it because its bin/ leads PATH in the final stage.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install "numpy<2" \
    && if [ -n "$TORCH_INDEX_URL" ]; then export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && /opt/venv/bin/pip install "torch==${TORCH_VERSION}"
# Only the server out of the wheel (not its Python client): binary, its libraries, the Python backend and
# the backend stub of this image's Python. RPATHs aside, LD_LIBRARY_PATH finds the libraries.
WORKDIR /tmp/pytriton
RUN /opt/venv/bin/pip download --no-deps --dest . "nvidia-pytriton==0.7.0" \
    && python3 -m zipfile -e nvidia_pytriton-*.whl wheel \
    && server=wheel/pytriton/tritonserver \
    && python_version="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
    && mkdir -p /opt/tritonserver/bin /opt/tritonserver/backends/python \
    && cp "$server/bin/tritonserver" /opt/tritonserver/bin/ \
    && cp -r wheel/nvidia_pytriton.libs /opt/tritonserver/lib \
    && cp "$server"/backends/python/libtriton_python.so "$server"/backends/python/triton_python_backend_utils.py \
          "$server/python_backend_stubs/$python_version/triton_python_backend_stub" /opt/tritonserver/backends/python/ \
    && chmod 0755 /opt/tritonserver/bin/tritonserver /opt/tritonserver/backends/python/triton_python_backend_stub \
    && rm -rf /tmp/pytriton

############################ triton-cpu: `tritonserver --model-repository=/models ...` as in NGC's image, CPU only
FROM ${BASE_IMAGE} AS triton-cpu
LABEL org.opencontainers.image.title="nexusml-tritonserver-cpu" \
      org.opencontainers.image.description="Triton Inference Server 2.51.0 (CPU, Python backend, PyTorch)" \
      org.opencontainers.image.version="2.51.0"
# uid/gid 1000 = `triton-server`, as in NGC's image; /models for a volume mounted there.
RUN groupadd --system --gid 1000 triton-server \
    && useradd --system --uid 1000 --gid triton-server --home-dir /home/triton-server --create-home \
       --shell /usr/sbin/nologin triton-server \
    && mkdir -p /models
COPY --from=triton-builder /opt/tritonserver /opt/tritonserver
COPY --from=triton-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/opt/tritonserver/bin:$PATH \
    LD_LIBRARY_PATH=/opt/tritonserver/lib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/triton-server
USER 1000:1000
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=3)"]
CMD ["tritonserver", "--model-repository=/models"]

############################ runtime (default target): sync + proxy, non-root, no build tools
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nexusml-dataplane" \
      org.opencontainers.image.description="NexusML data plane: nexus sync (init/one-shot), nexus proxy, nexus watch" \
      org.opencontainers.image.version="0.1.0"
# uid/gid 1000 = the `triton-server` user of NVIDIA's Triton image, so the model repository written by
# `nexus sync` is owned by the same ids as the server that reads it. /models is created here so a fresh
# named volume mounted there inherits that ownership.
RUN groupadd --system --gid 1000 nexus \
    && useradd --system --uid 1000 --gid nexus --home-dir /home/nexus --create-home --shell /usr/sbin/nologin nexus \
    && mkdir -p /models /etc/nexus \
    && chown nexus:nexus /models
COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/nexus/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/nexus
USER 1000:1000
EXPOSE 8080
# Healthy = ready to serve (GET /readyz on $PORT: Triton up, the model answering). The one-shot `sync`
# container disables it in compose, the `watcher` checks its metrics port instead; Kubernetes ignores it and
# uses the chart's probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/nexus/healthcheck.py", "/readyz"]
ENTRYPOINT ["nexus"]
CMD ["proxy"]
