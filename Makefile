# Two commands matter: `make run` (the main job) and `make test` (the tests).
# Both create and fill .venv and install the Debian packages they need, idempotently.
# `make test-deploy` starts the deployments (compose, the Helm pod) in real containers; CI runs it after `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
# What each command installs (pyproject.toml's groups): `make run` the `run` group, the rest `dev` (which
# holds `run`); one stamp per group, so a change to pyproject.toml reinstalls.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# Debian packages: the Triton Python-backend stub embeds libpython3.11; perf_analyzer needs libb64;
# wrk drives the HTTP paths in the benchmarks.
DEB_PACKAGES := libpython3.11 libb64-0d wrk
DEPLOY_PACKAGES := podman runc netavark aardvark-dns iptables debootstrap

# $(call apt-install,PACKAGES): install those of the Debian packages that are missing.
define apt-install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
endef

.PHONY: run test test-fast test-deploy bench soak gpu-bundle lint settings-docs chart-files sysdeps deploy-sysdeps venv clean

run: sysdeps $(RUN_STAMP)
	$(BIN)/nexus up

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The quick loop: the tests that start no server (tests/conftest.py refuses a server to an unmarked test).
test-fast: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not integration"

# The deployments started for real (podman): images built here, docker compose and the Helm pod.
test-deploy: venv deploy-sysdeps
	$(BIN)/python -m pytest tests/deploy/containers --containers -s -p no:cacheprovider

bench: venv
	$(BIN)/python -m benchmarks

# The offline bundle a GPU session carries (benchmarks/README.md, "On a GPU machine"): needs the network.
gpu-bundle: venv
	$(BIN)/python -m benchmarks.gpu_bundle

soak: venv
	$(BIN)/python -m reliability

lint: venv
	$(BIN)/ruff check .

# docs/settings.md, generated from the settings classes (the tests fail while it is stale).
settings-docs: venv
	$(BIN)/python -m nexusml.command.settings_docs

# The watchdog as one file for Triton's container (the chart ships it, compose mounts it): generated from
# nexusml/triton/watchdog.py with nexusml/core/probe.py inlined (tests/deploy checks it is current).
chart-files: venv
	$(BIN)/python -m nexusml.command.chart_files

venv: sysdeps $(DEV_STAMP)

sysdeps:
	$(call apt-install,$(DEB_PACKAGES))

# podman runs the containers of test-deploy (runc: crun fails here; netavark + aardvark-dns give compose its
# service names, and netavark needs iptables, which a new machine lacks; debootstrap makes the base image).
deploy-sysdeps:
	$(call apt-install,$(DEPLOY_PACKAGES))

# $(call install,GROUP): the package (editable) with GROUP's dependencies and the pinned torch.
define install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" -e ".[$(1)]"
endef

$(RUN_STAMP): pyproject.toml
	$(call install,run)
	touch $@

$(DEV_STAMP): pyproject.toml
	$(call install,dev)
	touch $@ $(RUN_STAMP)

clean:
	rm -rf $(VENV) .nexus model_repository/*/
