"""One source of truth: ports, variable names and defaults agree across code, compose, chart and docs."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from nexusml.command.cli import parser
from nexusml.core.memory import REPORT_ROOT
from nexusml.core.settings import LogSettings, load, variables
from nexusml.sync.settings import S3Settings, SyncSettings
from nexusml.triton.server import TritonDistribution, command
from nexusml.triton.settings import TritonSettings
from nexusml.updates.watch import WatchSettings
from proxy.settings import ProxySettings
from tests.conftest import settings_classes
from tests.deploy.conftest import (
    CHART,
    COMPOSE,
    DOCKER_DIR,
    MEMORY_REPORTS,
    ROOT,
    container,
    env_of,
    load_compose,
    pod_spec,
    render_chart,
    run_triton_command,
    tritonserver_argv,
)

# S3Settings' credential variables: the shared environment block of compose and the chart hands them to
# every container, also to those that do not read them.
BOTO3_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION"}
# Set in the containers for the runtimes, not for our code; and the keys of Triton's restricted APIs, whose
# deployed values are the deployment's own (compose's placeholders, the chart's Secrets).
RUNTIME_VARIABLES = {"HOME", "PYTHONDONTWRITEBYTECODE", "TRITON_ADMIN_KEY", "TRITON_SHM_KEY"}

# Values the deployments set on purpose instead of the code's default, and why.
DEPLOYMENT_OVERRIDES = {
    "NEXUS_META_PATH": "container path of the mounted .nexus_meta.json",
    "MODEL_REPOSITORY": "container path of the shared model volume",
    "MODEL_SERVER_URL": "Triton's address as the proxy and the watcher see it (compose's service name; same gRPC port)",
    "DEVICE": "the sync container sees no GPU, so `auto` would always write KIND_CPU",
    "AWS_ENDPOINT_URL": "compose's MinIO",
    "MODEL_BUCKET": "compose's bucket (the code has no default)",
    "AWS_REGION": "MinIO wants a region",
    "AWS_ACCESS_KEY_ID": "compose's MinIO credentials",
    "AWS_SECRET_ACCESS_KEY": "compose's MinIO credentials",
    "WATCH_METRICS_HOST": "the watcher's metrics are scraped from outside its container",
    "LOG_FORMAT": "a log pipeline reads the containers' lines: one JSON object each",
    "API_KEYS_FILE": "container path of the mounted keys secret, set only when a keys file is given",
    "RESIDENCY_HOST": "compose: the proxy calls the watcher's decider from its own container",
    "RESIDENCY_URL": "the watcher's decider, set only with a memory budget",
    "RESIDENCY_KEY": "the deployment's own key of the residency API: compose's placeholder, the chart's Secret",
}
# Read by every command before its own settings (`nexus --log-level`, LOG_FORMAT).
COMMAND_VARIABLES = {spec.name: default for spec, default in variables(LogSettings)}


def code_variables() -> dict[str, set[str]]:
    """Every variable the processes read -> the reprs of its defaults (one per meaning)."""
    found: dict[str, set[str]] = {}
    for cls in settings_classes():
        for spec, default in variables(cls):
            found.setdefault(spec.name, set()).add(repr(default))
    return found


def sync_defaults() -> dict[str, Any]:
    return {spec.name: default for spec, default in variables(SyncSettings)}


def watch_defaults() -> dict[str, Any]:
    """WatchSettings' variables, the sync's and S3's among them (nested)."""
    return {spec.name: default for spec, default in variables(WatchSettings)}


def proxy_defaults() -> dict[str, Any]:
    return {spec.name: default for spec, default in variables(ProxySettings)}


def _as_text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def compose_environment(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in load_compose(COMPOSE)["services"][service]["environment"].items()}


_INTERPOLATION = re.compile(r"^\$\{(\w+)(:?-)(.*)\}$")


def test_settings_classes_are_found() -> None:
    names = {cls.__name__ for cls in settings_classes()}
    assert {"SyncSettings", "TritonSettings", "S3Settings"} <= names


@pytest.mark.parametrize(
    ("service", "process"),
    [
        pytest.param("model-sync", "sync", id="compose-model-sync"),
        pytest.param("publish-demo", "sync", id="compose-publish-demo"),
        pytest.param("proxy", "proxy", id="compose-proxy"),
        pytest.param("watcher", "watch", id="compose-watcher"),
    ],
)
def test_compose_variables_are_known_and_defaults_agree(service: str, process: str) -> None:
    defaults = sync_defaults() | {s.name: d for s, d in variables(S3Settings)}
    if process == "proxy":
        defaults = proxy_defaults()
    elif process == "watch":
        defaults = watch_defaults()
    defaults |= COMMAND_VARIABLES
    for name, value in compose_environment(service).items():
        assert name in defaults or name in BOTO3_VARIABLES | RUNTIME_VARIABLES, f"{service}: unknown {name}"
        match = _INTERPOLATION.match(value)
        written = match.group(3) if match else value
        if name in DEPLOYMENT_OVERRIDES or name in RUNTIME_VARIABLES:
            continue
        # empty = "the code's default"; anything else must be that default
        assert written in ("", _as_text(defaults[name])), f"{service}: {name}={value} vs {defaults[name]!r}"


def test_compose_ports_match_the_code() -> None:
    triton = TritonSettings()
    services = load_compose(COMPOSE)["services"]
    proxy_env = compose_environment("proxy")
    url = proxy_env["MODEL_SERVER_URL"]
    assert url == f"grpc://triton:{triton.grpc_port}"
    assert int(proxy_env["PORT"]) == int(_as_text(proxy_defaults()["PORT"]))
    port = proxy_env["PORT"]
    assert services["proxy"]["ports"] == [f"${{PROXY_PUBLISH:-127.0.0.1:{port}}}:{port}"]
    assert proxy_defaults()["MODEL_SERVER_URL"].rsplit(":", 1)[1] == str(triton.grpc_port)
    assert f"--url http://127.0.0.1:{triton.http_port} " in " ".join(services["triton"]["healthcheck"]["test"])


def _launcher_flags(settings: TritonSettings | None = None) -> dict[str, str]:
    dist = TritonDistribution(Path("tritonserver"), Path("libs"), Path("python"), Path("stub"))
    argv = command(settings or TritonSettings(), dist, Path("backends"))[1:]
    flags = dict(arg.partition("=")[::2] for arg in argv)
    for path in ("--model-repository", "--backend-directory"):
        flags.pop(path)
    return flags


RESTRICTED = {"--http-restricted-api", "--grpc-restricted-protocol"}
ADDRESSES = ("--http-address", "--grpc-address")


def _deployed_flags(argv: list[str], variables: dict[str, str] | None = None) -> dict[str, str]:
    """The flags, less the restricted groups (each flag twice: the admin APIs, then the shared-memory API); a
    compose `${VAR:-default}` in a value is the variable's value in `variables`, else its default."""

    def resolved(value: str) -> str:
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: (variables or {}).get(m.group(1), m.group(2)), value)

    pairs = [
        (flag, resolved(value))
        for flag, value in (str(arg).partition("=")[::2] for arg in argv)
        if flag.startswith("--")
    ]
    for name in RESTRICTED:
        groups = [value.partition(":")[0] for flag, value in pairs if flag == name]
        assert groups == ["model-repository,logging,trace,statistics", "shared-memory"], name
    flags = dict(pair for pair in pairs if pair[0] not in RESTRICTED)
    assert flags.pop("--model-repository") == "/models"
    return flags


def test_triton_flags_are_the_launchers() -> None:
    """compose and Helm start tritonserver with exactly the flags of nexusml/triton/server.py (+ restricted APIs).

    Addresses: the chart binds loopback as the launcher does (the proxy is in the same pod); compose cannot,
    since the proxy calls Triton from another container (compose keeps Triton on an internal network instead).
    """
    launcher = _launcher_flags()
    compose_argv = tritonserver_argv(load_compose(COMPOSE)["services"]["triton"]["command"])
    assert compose_argv[0] == "tritonserver"
    assert _deployed_flags(compose_argv) == {k: v for k, v in launcher.items() if k not in ADDRESSES}
    helm_triton = container(pod_spec(render_chart({})), "triton")
    assert helm_triton["command"] == ["tritonserver"]
    assert _deployed_flags(helm_triton["args"]) == launcher
    assert {launcher[a] for a in ADDRESSES} == {TritonSettings().host} == {"127.0.0.1"}


def test_a_directory_of_models_makes_triton_lenient_in_each_deployment(tmp_path: Path) -> None:
    """With many models one that fails to load must not stop Triton or make it unready: the launcher, compose
    (`TRITON_STRICT=false`) and the chart (`nexusMeta.models`) all turn both flags off, and only then."""
    lenient = {"--strict-readiness": "false", "--exit-on-error": "false"}
    launcher = _launcher_flags(dataclasses.replace(TritonSettings(), meta_path=tmp_path))
    assert {k: launcher[k] for k in lenient} == lenient
    compose_argv = tritonserver_argv(load_compose(COMPOSE)["services"]["triton"]["command"])
    compose = _deployed_flags(compose_argv, {"TRITON_STRICT": "false"})
    assert {k: compose[k] for k in lenient} == lenient
    models = {"nexusMeta": {"models": {"alpha": (ROOT / "examples" / "nexus_meta.example.json").read_text()}}}
    chart = _deployed_flags(container(pod_spec(render_chart(models)), "triton")["args"])
    assert {k: chart[k] for k in lenient} == lenient


BUDGET = {"MODEL_MEMORY_BUDGET": "8GiB", "PINNED_MODELS": "alpha,beta"}


def _loads(argv: list[str]) -> list[str]:
    return [str(arg).partition("=")[2] for arg in argv if str(arg).startswith("--load-model=")]


def test_a_budget_loads_the_pinned_models_only_in_each_deployment(tmp_path: Path) -> None:
    """With MODEL_MEMORY_BUDGET the launcher, compose (its /bin/sh script) and the chart (`residency.*`) start
    Triton with the same flags: one --load-model per pinned model, in order, and both strict flags false."""
    settings = load(TritonSettings, BUDGET)
    dist = TritonDistribution(Path("tritonserver"), Path("libs"), Path("python"), Path("stub"))
    launcher_argv = command(settings, dist, Path("backends"))[1:]
    launcher = {k: v for k, v in _launcher_flags(settings).items() if k != "--load-model"}
    assert _loads(launcher_argv) == ["alpha", "beta"]
    compose_command = [arg.replace("$$", "$") for arg in load_compose(COMPOSE)["services"]["triton"]["command"]]
    compose_argv = run_triton_command(compose_command, BUDGET, tmp_path)
    assert _loads(compose_argv) == _loads(launcher_argv)
    compose = {k: v for k, v in _deployed_flags(compose_argv).items() if k != "--load-model"}
    assert compose == {k: v for k, v in launcher.items() if k not in ADDRESSES}
    values = {"watcher": {"enabled": True}, "residency": {"memoryBudget": "8GiB", "pinned": ["alpha", "beta"]}}
    chart_argv = container(pod_spec(render_chart(values)), "triton")["args"]
    assert _loads(chart_argv) == _loads(launcher_argv)
    assert {k: v for k, v in _deployed_flags(chart_argv).items() if k != "--load-model"} == launcher


# Each deployment's container (compose service, chart container) -> the settings of the process it runs.
PROCESSES = {
    ("model-sync", "sync"): SyncSettings,
    ("triton", "triton"): TritonSettings,
    ("proxy", "proxy"): ProxySettings,
    ("watcher", "watcher"): WatchSettings,
}


def test_the_residency_key_reaches_exactly_the_processes_that_read_it() -> None:
    """RESIDENCY_KEY opens the decider's API: the watcher checks it and the proxy sends it, and no other container
    holds it (Triton runs the models' code), in compose and in the chart (with a budget)."""
    readers = {
        names for names, cls in PROCESSES.items() if "RESIDENCY_KEY" in {spec.name for spec, _ in variables(cls)}
    }
    assert {service for service, _ in readers} == {"watcher", "proxy"}
    services = load_compose(COMPOSE)["services"]
    assert {s for s, service in services.items() if "RESIDENCY_KEY" in (service.get("environment") or {})} == {
        service for service, _ in readers
    }
    values = {"watcher": {"enabled": True}, "residency": {"memoryBudget": "8GiB"}}
    spec = pod_spec(render_chart(values))
    chart = {c["name"] for c in spec["initContainers"] + spec["containers"] if "RESIDENCY_KEY" in env_of(c)}
    assert chart == {name for _, name in readers}


def test_memory_reports_are_mounted_where_the_stubs_write_them() -> None:
    """The stubs write under nexusml/core/memory.py's REPORT_ROOT and the decider reads there: each deployment mounts
    its reports volume at that path in Triton and the watcher (the stubs' folder inside is named by the repository's
    path, /models in both)."""
    assert str(REPORT_ROOT) == MEMORY_REPORTS
    services = load_compose(COMPOSE)["services"]
    for name in ("triton", "watcher"):
        targets = [v.split(":")[1] for v in services[name]["volumes"] if isinstance(v, str)]
        assert str(REPORT_ROOT) in targets, name
    values = {"watcher": {"enabled": True}, "residency": {"memoryBudget": "8GiB"}}
    spec = pod_spec(render_chart(values))
    for name in ("triton", "watcher"):
        assert str(REPORT_ROOT) in {m["mountPath"] for m in container(spec, name)["volumeMounts"]}, name


def test_chart_defaults_match_the_code() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    triton = TritonSettings()
    assert values["triton"]["ports"] == {
        "http": triton.http_port,
        "grpc": triton.grpc_port,
        "metrics": triton.metrics_port,
    }
    assert values["triton"]["exitTimeoutSeconds"] == triton.exit_timeout_s
    assert values["triton"]["logVerbose"] == triton.log_verbose
    proxy = proxy_defaults()
    assert values["proxy"]["port"] == proxy["PORT"] == values["service"]["port"]
    assert values["proxy"]["shutdownGraceSeconds"] == proxy["SHUTDOWN_GRACE_S"]
    # empty means "each process's default": nothing duplicated
    assert values["config"] == {"batchSize": "", "batchTimeoutMs": "", "device": ""}
    assert values["proxy"]["modelName"] == "" and values["proxy"]["maxInFlight"] == ""


@pytest.mark.parametrize(
    ("name", "process"),
    [
        pytest.param("sync", "sync", id="init-sync"),
        pytest.param("proxy", "proxy", id="proxy"),
        pytest.param("watcher", "watch", id="watcher"),
    ],
)
def test_chart_variables_are_known_and_defaults_agree(name: str, process: str) -> None:
    values = {
        "config": {"batchSize": 64, "batchTimeoutMs": 5},
        "sync": {"extraEnv": {"INSTANCE_COUNT": 2}},
        "proxy": {"extraEnv": {"PROXY_WORKERS": 2}, "keysFile": {"existingSecret": "teams"}},
        "s3": {"endpointUrl": "http://minio:9000", "bucket": "b", "region": "eu-west-1"},
        "aws": {"credentialsSecret": "aws"},
        "watcher": {"enabled": True},
        "residency": {"memoryBudget": "8GiB", "pinned": ["a", "b"]},
    }
    known = sync_defaults() | {s.name: d for s, d in variables(S3Settings)}
    if process == "proxy":
        known = proxy_defaults()
    elif process == "watch":
        known = watch_defaults()
    known |= COMMAND_VARIABLES
    env = env_of(container(pod_spec(render_chart(values)), name))
    for variable, value in env.items():
        assert variable in known or variable in BOTO3_VARIABLES, f"{name}: unknown {variable}"
        if isinstance(value, str) and variable not in DEPLOYMENT_OVERRIDES and variable in known:
            if variable in {"BATCH_SIZE", "BATCH_TIMEOUT_MS", "INSTANCE_COUNT", "PROXY_WORKERS", *BUDGET}:
                continue  # set by this test's values
            assert value == _as_text(known[variable]), f"{name}: {variable}={value} vs {known[variable]!r}"
    if process in ("sync", "watch"):
        assert env["BATCH_SIZE"] == "64" and env["BATCH_TIMEOUT_MS"] == "5"
    else:  # Triton's batcher is the sync's business; the proxy's coalescer has its own COALESCE_* names
        assert "BATCH_SIZE" not in env and "BATCH_TIMEOUT_MS" not in env


@pytest.mark.parametrize("service", ["model-sync", "publish-demo", "proxy", "watcher"])
def test_compose_services_of_ours_log_json(service: str) -> None:
    assert compose_environment(service)["LOG_FORMAT"] == "${LOG_FORMAT:-json}"


@pytest.mark.parametrize("name", ["sync", "proxy", "watcher"])
def test_chart_containers_of_ours_log_json(name: str) -> None:
    values = {"watcher": {"enabled": True}}
    assert env_of(container(pod_spec(render_chart(values)), name))["LOG_FORMAT"] == "json"


def test_proxy_talks_to_triton_over_localhost() -> None:
    spec = pod_spec(render_chart({}))
    url = env_of(container(spec, "proxy"))["MODEL_SERVER_URL"]
    assert url == proxy_defaults()["MODEL_SERVER_URL"] == f"grpc://127.0.0.1:{TritonSettings().grpc_port}"


def test_shared_names_keep_one_meaning() -> None:
    """A name read by several settings classes is one variable: one declaration, hence one default and bounds."""
    found = code_variables()
    assert "BATCH_SIZE" in found and "DEVICE" in found
    assert found["MODEL_REPOSITORY"] == {repr(Path("model_repository"))}
    assert found["NEXUS_META_PATH"] == {repr(Path(".nexus_meta.json"))}
    declarations: dict[str, set[int]] = {}
    for cls in settings_classes():
        for spec, _default in variables(cls):
            declarations.setdefault(spec.name, set()).add(id(spec))
    assert {name for name, specs in declarations.items() if len(specs) > 1} == set()


DEPRECATED = {alias for cls in settings_classes() for spec, _ in variables(cls) for alias in spec.aliases}


@pytest.mark.parametrize(
    "environment",
    [
        pytest.param(lambda: {s: compose_environment(s) for s in load_compose(COMPOSE)["services"]}, id="compose"),
        pytest.param(
            lambda: {
                c["name"]: env_of(c) for c in pod_spec(render_chart({"watcher": {"enabled": True}}))["containers"]
            },
            id="chart",
        ),
    ],
)
def test_deployments_use_no_deprecated_name(environment: Any) -> None:
    assert "TRITON_URL" in DEPRECATED
    for where, env in environment().items():
        assert not set(env) & DEPRECATED, f"{where}: {set(env) & DEPRECATED}"


def test_cli_has_the_commands_the_deployments_run() -> None:
    commands = set(parser()._subparsers._group_actions[0].choices)  # argparse has no public API
    assert {"sync", "publish-demo"} <= commands
    if "proxy" not in commands:
        pytest.skip("`nexus proxy` is not in nexusml/command/cli.py yet (the image's default command needs it)")


def test_the_image_installs_the_groups_its_commands_need() -> None:
    """The nexus image runs `nexus sync` and `nexus proxy`: pyproject's `sync` and `proxy` groups, no copy."""
    dockerfile = (DOCKER_DIR / "nexus.Dockerfile").read_text()
    assert "extras.py /tmp/deps/pyproject.toml sync proxy > /tmp/deps/requirements.txt" in dockerfile
    assert "COPY --from=requirements /tmp/deps/requirements.txt" in dockerfile
    spec = importlib.util.spec_from_file_location("extras", DOCKER_DIR / "extras.py")
    assert spec is not None and spec.loader is not None
    extras = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extras)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = {Requirement(r).name for r in extras.requirements(project, ["sync", "proxy"])}
    groups = project["optional-dependencies"]
    assert listed == {Requirement(r).name for r in [*project["dependencies"], *groups["sync"], *groups["proxy"]]}
    # what Triton's image or the demo image brings, never the runtime image
    assert not listed & {"torch", "nvidia-pytriton", "moto"}


def test_chart_placeholder_is_the_example_metadata() -> None:
    ours = json.loads((CHART / "files" / "nexus_meta.example.json").read_text())
    assert ours == json.loads((ROOT / "examples" / "nexus_meta.example.json").read_text())


def test_deploy_doc_has_the_commands() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    for expected in (
        "docker compose --profile demo up -d --build",
        "docker compose -f docker-compose.yml -f docker-compose.cpu.yml",
        "helm install",
        "--set-file nexusMeta.content=",
        "kubectl",
        "port-forward",
    ):
        assert expected in text, expected
