# syntax=docker/dockerfile:1
# The NexusML data-plane image: one image, two entry points.
#   nexus sync    one-shot: .nexus_meta.json -> S3 -> model repository (compose `model-sync`, Helm init container)
#   nexus proxy   the JSON front proxy on $PORT (8080), talking to Triton (compose `proxy`, Helm `proxy` container)
# Targets: `runtime` (the default, last stage) and `demo` (runtime + CPU PyTorch, for `nexus publish-demo`).
# Build from the repository root:  docker build -f docker/nexus.Dockerfile -t nexusml/dataplane:0.1.0 .
# Triton itself runs from NVIDIA's image (nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3); nothing of
# this image is needed there, because the generated model.py imports only torch and numpy.

############################ builder: a virtual environment with the runtime dependencies
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so editing the code does not reinstall them.
COPY docker/requirements-runtime.txt /tmp/requirements-runtime.txt
RUN pip install --requirement /tmp/requirements-runtime.txt
# .dockerignore lets in only pyproject.toml, README.md, nexusml/, proxy/ and the files under docker/ used here.
COPY . .
RUN pip install --no-deps . \
    && python -c "import nexusml.cli, nexusml.sync, proxy.app, tritonclient.grpc"

############################ demo-builder: adds a CPU build of PyTorch for `nexus publish-demo`
FROM builder AS demo-builder
# 2.5.x: the PyTorch of the 24.10 Triton image, so the TorchScript file the demo writes loads there.
ARG TORCH_VERSION=2.5.1
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

############################ demo: the control-plane stand-in (compose profile `demo`), one-shot
FROM python:3.11.11-slim-bookworm AS demo
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

############################ runtime (default target): sync + proxy, non-root, no build tools
FROM python:3.11.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="nexusml-dataplane" \
      org.opencontainers.image.description="NexusML data plane: nexus sync (init/one-shot) and nexus proxy" \
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
# Liveness of the proxy (GET /healthz on $PORT). The one-shot `sync` container disables it in compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/nexus/healthcheck.py", "/healthz"]
ENTRYPOINT ["nexus"]
CMD ["proxy"]
