"""The Helm chart, rendered by a real Helm engine (helm-python-sdk) and validated against Kubernetes schemas."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import yaml

from nexusml.command import chart_files
from nexusml.core.settings import variables
from nexusml.sync.settings import SyncSettings
from nexusml.triton.settings import TritonSettings
from nexusml.updates.watch import WatchSettings
from tests.deploy.conftest import (
    CHART,
    CHART_CASES,
    KUBE_VERSION,
    MANY_MODELS,
    MEMORY_REPORTS,
    TRITON_PORT_NAMES,
    TRITON_PORTS,
    by_kind,
    container,
    env_of,
    model_metadata,
    pod_spec,
    render_chart,
    render_files,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev dependency")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

RESTRICTED_VOLUME_TYPES = {"configMap", "emptyDir", "secret", "projected", "downwardAPI", "persistentVolumeClaim"}


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(None, id="default"),
        pytest.param({"watcher": {"enabled": True}}, id="watcher"),
        pytest.param({"nexusMeta": {"models": MANY_MODELS}, "watcher": {"enabled": True}}, id="many-models"),
        pytest.param(next(c.values[0] for c in CHART_CASES if c.id == "residency"), id="residency"),
    ],
)
def test_lint_is_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("values", CHART_CASES)
def test_every_manifest_validates(values: dict[str, Any]) -> None:
    objects = render_chart(values)
    expected = {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    if not values.get("nexusMeta"):
        expected.add("ConfigMap")
    assert expected <= {o["kind"] for o in objects}
    for obj in objects:
        # strict: unknown fields are errors too
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("values", CHART_CASES)
def test_restricted_security_context(values: dict[str, Any]) -> None:
    spec = pod_spec(render_chart(values))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    containers = spec["initContainers"] + spec["containers"]
    watcher = ["watcher"] if values.get("watcher", {}).get("enabled") else []
    assert [c["name"] for c in containers] == ["sync", "triton", "proxy", *watcher]
    for item in containers:
        ctx = item["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, item["name"]
        assert ctx["readOnlyRootFilesystem"] is True, item["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"], item["name"]
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", item["name"]
        assert ctx.get("runAsNonRoot", pod["runAsNonRoot"]) is True, item["name"]
        assert not ctx.get("privileged", False), item["name"]
        # a read-only root needs a writable /tmp
        assert "/tmp" in {m["mountPath"] for m in item["volumeMounts"]}, item["name"]
    for volume in spec["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUME_TYPES, volume
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


def test_pipeline_shares_the_model_repository() -> None:
    spec = pod_spec(render_chart({}))
    sync, triton = container(spec, "sync"), container(spec, "triton")
    volumes = {v["name"]: v for v in spec["volumes"]}
    models = {m["name"]: m for m in sync["volumeMounts"]}["models"]
    assert "emptyDir" in volumes["models"]
    assert env_of(sync)["MODEL_REPOSITORY"] == models["mountPath"]
    triton_models = {m["name"]: m for m in triton["volumeMounts"]}["models"]
    assert triton_models["readOnly"] is True
    assert f"--model-repository={triton_models['mountPath']}" in triton["args"]
    # the metadata file from the ConfigMap is where NEXUS_META_PATH points
    meta_mount = {m["name"]: m for m in sync["volumeMounts"]}["nexus-meta"]
    key = volumes["nexus-meta"]["configMap"]["items"][0]["path"]
    assert env_of(sync)["NEXUS_META_PATH"] == f"{meta_mount['mountPath']}/{key}"
    assert volumes["nexus-meta"]["configMap"]["name"] == meta_config_map(render_chart({}))["metadata"]["name"]


def meta_config_map(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-meta")]
    return found


# --- the metadata: one model (nexusMeta.content) or a directory of models (nexusMeta.models) ---------------------
def _meta_readers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [container(spec, name) for name in ("sync", "proxy", "watcher")]


@pytest.mark.parametrize(
    ("meta", "path", "items"),
    [
        pytest.param({}, "/etc/nexus/.nexus_meta.json", [".nexus_meta.json"], id="one-model"),
        pytest.param({"content": "{}", "key": "model.json"}, "/etc/nexus/model.json", ["model.json"], id="own-key"),
        pytest.param({"existingConfigMap": "cm"}, "/etc/nexus/.nexus_meta.json", [".nexus_meta.json"], id="existing"),
        pytest.param({"models": MANY_MODELS}, "/etc/nexus", None, id="models"),
        pytest.param({"existingConfigMap": "cm", "key": ""}, "/etc/nexus", None, id="existing-models"),
    ],
)
def test_the_sync_proxy_and_watcher_read_one_file_or_the_directory(
    meta: dict[str, Any], path: str, items: list[str] | None
) -> None:
    """One model: its key alone, NEXUS_META_PATH the file. Many: the ConfigMap whole (no item list, so a key added
    or removed reaches the folder without a change to the pod's spec), NEXUS_META_PATH the folder itself."""
    spec = pod_spec(render_chart({"nexusMeta": meta, "watcher": {"enabled": True}}))
    for item in _meta_readers(spec):
        assert env_of(item)["NEXUS_META_PATH"] == path, item["name"]
        assert _mounts(item)["nexus-meta"] == {"name": "nexus-meta", "mountPath": "/etc/nexus", "readOnly": True}
    assert "nexus-meta" not in _mounts(container(spec, "triton"))
    volume = {v["name"]: v for v in spec["volumes"]}["nexus-meta"]["configMap"]
    assert volume.get("items") == (None if items is None else [{"key": k, "path": k} for k in items])
    assert volume["name"] == meta.get("existingConfigMap", "nexus-nexus-dataplane-meta")


def test_each_model_is_one_key_of_the_chart_config_map() -> None:
    objects = render_chart({"nexusMeta": {"models": MANY_MODELS}})
    data = meta_config_map(objects)["data"]
    assert data == {f"{name}.json": text for name, text in MANY_MODELS.items()}
    assert {json.loads(text)["name"] for text in data.values()} == set(MANY_MODELS)
    # a null model (`--set nexusMeta.models.<name>=null` with --reuse-values) is a model removed
    fewer = meta_config_map(render_chart({"nexusMeta": {"models": {**MANY_MODELS, "wide_mlp": None}}}))["data"]
    assert set(fewer) == {"demo_mlp.json", "narrow.v2.json"}


def test_a_model_changed_rolls_the_pods_and_with_the_watcher_a_model_added_does_not() -> None:
    def template(models: dict[str, Any], watcher: bool) -> dict[str, Any]:
        values = {"nexusMeta": {"models": models}, "watcher": {"enabled": watcher}}
        (deployment,) = by_kind(render_chart(values), "Deployment")
        return deployment["spec"]["template"]

    changed = {**MANY_MODELS, "wide_mlp": model_metadata("wide_mlp").replace('"version": 1', '"version": 2')}
    assert changed != MANY_MODELS
    annotation = "checksum/nexus-meta"
    assert (
        template(MANY_MODELS, False)["metadata"]["annotations"][annotation]
        != (template(changed, False)["metadata"]["annotations"][annotation])
    )
    added = {**MANY_MODELS, "ranker": model_metadata("ranker")}
    assert template(MANY_MODELS, True) == template(added, True) == template(changed, True)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        pytest.param(
            {"content": "{}", "models": MANY_MODELS},
            r"nexusMeta\.content \(one model\) and nexusMeta\.models \(one key per model\): set one of them",
            id="content-and-models",
        ),
        pytest.param(
            {"models": MANY_MODELS, "existingConfigMap": "cm"},
            r"nexusMeta\.models \(the chart's ConfigMap\) and nexusMeta\.existingConfigMap \(yours\)",
            id="models-and-existing-config-map",
        ),
        pytest.param({"models": {".hidden": "{}"}}, r'"\.hidden" is not a model name', id="hidden-name"),
        pytest.param({"models": {"a/b": "{}"}}, r'"a/b" is not a model name', id="path-name"),
        pytest.param({"models": {"demo": " "}}, r"nexusMeta\.models\.demo is empty", id="empty-model"),
        pytest.param(
            {"models": {"demo": {"name": "demo"}}}, r"nexusMeta\.models\.demo: the metadata's JSON text", id="map"
        ),
        pytest.param({"key": ""}, r"nexusMeta\.key is empty", id="no-key"),
    ],
)
def test_bad_metadata_values_are_refused(meta: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render_chart({"nexusMeta": meta})


def test_notes_name_each_models_route() -> None:
    notes = next(
        text
        for path, text in render_files({"nexusMeta": {"models": MANY_MODELS}}).items()
        if path.endswith("NOTES.txt")
    )
    for name in MANY_MODELS:
        assert f"/models/{name}/predict" in notes, name
    assert "--set-file nexusMeta.models.<name>=" in notes and "WARNING" not in notes


def _probe_argv(probe: dict[str, Any]) -> dict[str, str]:
    argv = probe["exec"]["command"]
    assert argv[:2] == ["python3", "/opt/nexus/triton_watchdog.py"]
    return dict(zip(argv[2::2], argv[3::2], strict=True))


@pytest.mark.parametrize("values", CHART_CASES)
def test_probes(values: dict[str, Any]) -> None:
    spec = pod_spec(render_chart(values))
    proxy, triton = container(spec, "proxy"), container(spec, "triton")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert ports["http"] == 8080
    # start-up: Triton has at least the local launcher's readiness wait, and more, for model load
    startup = triton["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 2 * TritonSettings().startup_timeout_s, budget
    # the pod's readiness is the proxy's /readyz (which asks Triton); Triton's own would add nothing
    assert "readinessProbe" not in triton


@pytest.mark.parametrize("values", CHART_CASES)
def test_triton_binds_loopback_and_its_probes_run_inside_the_container(values: dict[str, Any]) -> None:
    """httpGet and tcpSocket probes come from the kubelet, on the pod's address: Triton on 127.0.0.1 needs exec."""
    spec = pod_spec(render_chart(values))
    triton = container(spec, "triton")
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1"} <= set(triton["args"])
    assert {p["name"] for p in triton["ports"]} == {"triton-metrics"}
    http_port = int(re.search(r"--http-port=(\d+)", " ".join(triton["args"])).group(1))
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name in ("startupProbe", "livenessProbe"):
        probe = triton[name]
        assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set(), name
        options = _probe_argv(probe)
        assert options["--url"] == f"http://127.0.0.1:{http_port}", name
        assert options["--repository"] == "/models" and mounts["/models"]["readOnly"] is True
        assert "--end-after" not in options, "the kubelet restarts the container, with CrashLoopBackOff back-off"
        assert float(options["--timeout"]) < probe["timeoutSeconds"], name
    script = mounts["/opt/nexus"]
    assert script["readOnly"] is True
    assert volumes[script["name"]]["configMap"]["name"].endswith("-triton-probe")


def test_the_probe_script_is_the_watchdog_source() -> None:
    """The chart cannot read outside its folder: files/triton_watchdog.py is generated, never edited by hand."""
    source = chart_files.render()
    assert (CHART / "files" / "triton_watchdog.py").read_text() == source, "stale copy: run make chart-files"
    (config_map,) = [o for o in by_kind(render_chart({}), "ConfigMap") if o["metadata"]["name"].endswith("-probe")]
    assert config_map["data"] == {"triton_watchdog.py": source}


@pytest.mark.parametrize("values", CHART_CASES)
def test_egress_is_dns_and_the_syncs_s3_only(values: dict[str, Any]) -> None:
    (policy,) = by_kind(render_chart(values), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    dns, *rules = policy["spec"]["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    (https,) = rules
    assert https["ports"] == [{"port": 443, "protocol": "TCP"}]
    (block,) = https["to"]
    assert "169.254.169.254/32" in block["ipBlock"]["except"], "the cloud metadata service (node role) is denied"
    (open_policy,) = by_kind(render_chart({"networkPolicy": {"egress": {"enabled": False}}}), "NetworkPolicy")
    assert open_policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in open_policy["spec"]


@pytest.mark.parametrize("values", CHART_CASES)
def test_no_service_exposes_triton(values: dict[str, Any]) -> None:
    objects = render_chart(values)
    services = by_kind(objects, "Service")
    assert len(services) == 1
    spec = pod_spec(objects)
    proxy_ports = {p["name"]: p["containerPort"] for p in container(spec, "proxy")["ports"]}
    for service in services:
        for port in service["spec"]["ports"]:
            assert port["port"] not in TRITON_PORTS, port
            assert port["targetPort"] not in TRITON_PORTS | TRITON_PORT_NAMES, port
            assert proxy_ports[port["targetPort"]] == 8080
    for policy in by_kind(objects, "NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            names = {p["port"] for p in rule["ports"]}
            assert names & {"triton-http", "triton-grpc"} == set(), rule
            if "triton-metrics" in names:
                assert rule.get("from"), "Triton metrics must be open only to listed peers"


@pytest.mark.parametrize(
    ("values", "gpus", "device"),
    [
        pytest.param({}, 0, "cpu", id="default-cpu"),
        pytest.param({"gpu": {"enabled": True}}, 1, "cuda", id="gpu"),
        pytest.param({"gpu": {"enabled": True, "count": 2}}, 2, "cuda", id="gpu-2"),
        pytest.param({"gpu": {"enabled": True}, "config": {"device": "cpu"}}, 1, "cpu", id="gpu-device-override"),
    ],
)
def test_gpu_resources(values: dict[str, Any], gpus: int, device: str) -> None:
    spec = pod_spec(render_chart(values))
    limits = container(spec, "triton")["resources"].get("limits", {})
    assert limits.get("nvidia.com/gpu", 0) == gpus
    for name in ("sync", "proxy"):
        assert "nvidia.com/gpu" not in container(spec, name).get("resources", {}).get("limits", {})
    assert env_of(container(spec, "sync"))["DEVICE"] == device
    tolerations = {t["key"] for t in spec.get("tolerations", [])}
    assert ("nvidia.com/gpu" in tolerations) == bool(gpus)


@pytest.mark.parametrize(
    ("values", "metric_types"),
    [
        pytest.param({"autoscaling": {"enabled": True}}, ["Resource"], id="cpu"),
        pytest.param(
            {"autoscaling": {"enabled": True, "customMetric": {"enabled": True}}},
            ["Resource", "Pods"],
            id="cpu-and-custom",
        ),
    ],
)
def test_autoscaling(values: dict[str, Any], metric_types: list[str]) -> None:
    objects = render_chart(values)
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    (deployment,) = by_kind(objects, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == metric_types
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    # utilisation needs CPU requests on every container
    for item in deployment["spec"]["template"]["spec"]["containers"]:
        assert item["resources"]["requests"]["cpu"], item["name"]
    assert by_kind(render_chart({}), "HorizontalPodAutoscaler") == []


def test_disruption_budget_and_rollout() -> None:
    objects = render_chart({})
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    (deployment,) = by_kind(objects, "Deployment")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _drain(item: dict[str, Any]) -> int:
    return int(item["lifecycle"]["preStop"]["exec"]["command"][1])


@pytest.mark.parametrize("values", CHART_CASES)
def test_termination_grace_exceeds_drains(values: dict[str, Any]) -> None:
    spec = pod_spec(render_chart(values))
    proxy, triton = container(spec, "proxy"), container(spec, "triton")
    proxy_grace = float(env_of(proxy)["SHUTDOWN_GRACE_S"])
    triton_grace = int(re.search(r"--exit-timeout-secs=(\d+)", " ".join(triton["args"])).group(1))
    proxy_done = _drain(proxy) + proxy_grace
    # Triton gets SIGTERM only after the proxy has drained against it
    assert _drain(triton) >= proxy_done
    assert spec["terminationGracePeriodSeconds"] > max(proxy_done, _drain(triton) + triton_grace)


def test_too_short_grace_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render_chart({"terminationGracePeriodSeconds": 30})


def test_aws_credentials_only_in_the_init_container() -> None:
    (values,) = [case.values[0] for case in CHART_CASES if case.id == "secrets-irsa-existing"]
    objects = render_chart(values)
    spec = pod_spec(objects)
    sync_env = env_of(container(spec, "sync"))
    assert sync_env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "nexus-aws", "key": "AWS_ACCESS_KEY_ID"}}
    assert sync_env["AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
    for name in ("triton", "proxy"):
        assert not [k for k in env_of(container(spec, name)) if k.startswith("AWS_")], name
    (account,) = by_kind(objects, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    # IRSA: EKS' pod identity webhook would inject the role into every container; it skips those named here
    (deployment,) = by_kind(objects, "Deployment")
    skipped = deployment["spec"]["template"]["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"]
    assert set(skipped.split(",")) == {c["name"] for c in spec["containers"]} == {"triton", "proxy"}
    assert [o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")] == ["nexus-nexus-dataplane-triton-probe"]
    assert by_kind(objects, "Secret") == []
    assert {v["name"]: v for v in spec["volumes"]}["nexus-meta"]["configMap"]["name"] == "control-plane-meta"
    assert env_of(container(spec, "proxy"))["API_KEYS"]["secretKeyRef"]["name"] == "nexus-api-keys"


def test_metadata_from_values_lands_in_the_configmap() -> None:
    content = '{"schema_version": 1, "name": "m"}'
    config_map = meta_config_map(render_chart({"nexusMeta": {"content": content}}))
    assert config_map["data"] == {".nexus_meta.json": content}
    default = meta_config_map(render_chart({}))["data"][".nexus_meta.json"]
    assert default == (CHART / "files" / "nexus_meta.example.json").read_text().strip()


def _secret(objects: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    (found,) = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith(suffix)]
    return found


def test_triton_keys_come_from_secrets() -> None:
    """Two restricted groups, each its own key from its own Secret: the admin APIs, and the shared-memory API."""
    objects = render_chart({})
    triton = container(pod_spec(objects), "triton")
    for variable, suffix in (("TRITON_ADMIN_KEY", "-triton-admin"), ("TRITON_SHM_KEY", "-triton-shm")):
        secret = _secret(objects, suffix)
        ref = env_of(triton)[variable]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["data"], variable
        assert len(base64.b64decode(secret["data"][ref["key"]])) == 32, "random, made by the chart"
    restricted = [a for a in triton["args"] if "restricted" in a]
    categories = "model-repository,logging,trace,statistics"
    assert restricted == [
        f"--http-restricted-api={categories}:nexus-admin-key=$(TRITON_ADMIN_KEY)",
        f"--grpc-restricted-protocol={categories}:nexus-admin-key=$(TRITON_ADMIN_KEY)",
        "--http-restricted-api=shared-memory:nexus-shm-key=$(TRITON_SHM_KEY)",
        "--grpc-restricted-protocol=shared-memory:nexus-shm-key=$(TRITON_SHM_KEY)",
    ]


# --- the /dev/shm Triton and the proxy share (Triton's system shared memory) ------------------------------------


@pytest.mark.parametrize("values", CHART_CASES)
def test_triton_and_the_proxy_share_a_memory_dev_shm(values: dict[str, Any]) -> None:
    """The proxy's regions are files of /dev/shm that Triton opens: one emptyDir of medium Memory in both, and in
    no other container (the watcher, which holds S3 credentials, never sees the requests' tensors)."""
    spec = pod_spec(render_chart(values))
    volumes = {v["name"]: v for v in spec["volumes"]}
    shared = set()
    for item in spec["initContainers"] + spec["containers"]:
        mounts = {m["mountPath"]: m for m in item["volumeMounts"]}
        if "/dev/shm" in mounts:
            assert not mounts["/dev/shm"].get("readOnly", False), item["name"]
            shared.add(mounts["/dev/shm"]["name"])
            assert item["name"] in ("triton", "proxy"), item["name"]
        else:
            assert item["name"] in ("sync", "watcher"), item["name"]
    (name,) = shared
    assert volumes[name]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def test_shared_memory_size_and_proxy_settings_from_values() -> None:
    values = {"sharedMemory": {"sizeLimit": "4Gi", "upstream": "off", "regionBytes": 134217728}}
    spec = pod_spec(render_chart(values))
    (volume,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert volume["emptyDir"]["sizeLimit"] == "4Gi"
    env = env_of(container(spec, "proxy"))
    assert env["UPSTREAM_SHARED_MEMORY"] == "off" and env["UPSTREAM_SHARED_MEMORY_BYTES"] == "134217728"
    # empty: the proxy's own defaults
    default = env_of(container(pod_spec(render_chart({})), "proxy"))
    assert "UPSTREAM_SHARED_MEMORY" not in default and "UPSTREAM_SHARED_MEMORY_BYTES" not in default


@pytest.mark.parametrize(
    ("values", "secret_name"),
    [
        pytest.param({"watcher": {"enabled": True}}, "nexus-nexus-dataplane-triton-shm", id="chart-secret"),
        pytest.param(
            {"watcher": {"enabled": True}, "sharedMemory": {"key": {"existingSecret": "shm", "secretKey": "k"}}},
            "shm",
            id="existing-secret",
        ),
    ],
)
def test_only_triton_and_the_proxy_hold_the_shared_memory_key(values: dict[str, Any], secret_name: str) -> None:
    objects = render_chart(values)
    spec = pod_spec(objects)
    holders = {c["name"] for c in spec["containers"] if "TRITON_SHM_KEY" in env_of(c)}
    assert holders == {"triton", "proxy"}
    refs = [env_of(container(spec, name))["TRITON_SHM_KEY"]["secretKeyRef"] for name in holders]
    assert refs[0] == refs[1] and refs[0]["name"] == secret_name
    assert "TRITON_ADMIN_KEY" not in env_of(container(spec, "proxy"))
    made = [s["metadata"]["name"] for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-triton-shm")]
    assert made == ([] if secret_name == "shm" else [secret_name])


@pytest.mark.parametrize(
    ("triton", "message"),
    [
        # Triton refuses an API in two restricted groups
        pytest.param(
            {"restrictedApis": ["model-repository", "logging", "trace", "shared-memory", "statistics"]},
            "restrictedApis: shared-memory",
            id="shared-memory-under-the-admin-key",
        ),
        # the former place of the size: said, not ignored
        pytest.param({"shmSizeLimit": "4Gi"}, "sharedMemory.sizeLimit", id="moved-size"),
    ],
)
def test_bad_shared_memory_values_are_refused(triton: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render_chart({"triton": triton})


@pytest.mark.parametrize("values", CHART_CASES)
def test_notes_say_how_to_call_the_service(values: dict[str, Any]) -> None:
    notes = next(text for path, text in render_files(values).items() if path.endswith("NOTES.txt"))
    assert "port-forward service/" in notes and "/predict" in notes and "/readyz" in notes


# Keys whose children are Kubernetes API fields passed through as they are (documented by the API).
VERBATIM = {
    "resources",
    "podSecurityContext",
    "containerSecurityContext",
    "strategy",
    "behavior",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "tolerations",
    "rules",
}


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = next((x.strip() for x in reversed(lines[:number]) if x.strip()), "")
        commented = previous.startswith("#")
        inherited = any(parent in VERBATIM for _, parent, _ in stack)
        if not (commented or inherited):
            undocumented.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, commented))
    assert undocumented == []


def test_chart_values_cover_triton_settings() -> None:
    """Each TritonSettings variable that the container needs has its value in values.yaml."""
    names = {spec.name for spec, _ in variables(TritonSettings)}
    assert {"TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "TRITON_EXIT_TIMEOUT_S"} <= names
    text = (CHART / "values.yaml").read_text()
    for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "TRITON_EXIT_TIMEOUT_S"):
        assert f"-- {name}" in text, name


# --- the watcher (`nexus watch`, watcher.enabled) ------------------------------------------------------------
WATCHER_CASE = next(case.values[0] for case in CHART_CASES if case.id == "watcher")


def _mounts(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in item["volumeMounts"]}


def test_watcher_is_off_by_default_and_metadata_changes_roll_the_deployment() -> None:
    """Without the watcher, Kubernetes' rolling update is the update path: the metadata's checksum rolls the pods."""
    objects = render_chart({})
    spec = pod_spec(objects)
    assert [c["name"] for c in spec["containers"]] == ["triton", "proxy"]
    assert "watcher-tmp" not in {v["name"] for v in spec["volumes"]}
    (deployment,) = by_kind(objects, "Deployment")
    assert "checksum/nexus-meta" in deployment["spec"]["template"]["metadata"]["annotations"]
    (policy,) = by_kind(render_chart({"networkPolicy": {"watcherMetricsFrom": [{"podSelector": {}}]}}), "NetworkPolicy")
    assert all(p["port"] != "watch-metrics" for rule in policy["spec"]["ingress"] for p in rule["ports"])


def test_watcher_container() -> None:
    objects = render_chart(WATCHER_CASE)
    spec = pod_spec(objects)
    watcher, sync, triton = container(spec, "watcher"), container(spec, "sync"), container(spec, "triton")
    assert watcher["args"] == ["watch"]
    assert watcher["image"] == sync["image"] == container(spec, "proxy")["image"]
    env = env_of(watcher)
    # the pod's model repository, written, at the path Triton reads it from (the candidate's links resolve)
    models = _mounts(watcher)["models"]
    assert models["mountPath"] == _mounts(triton)["models"]["mountPath"] == env["MODEL_REPOSITORY"] == "/models"
    assert not models.get("readOnly", False)
    assert _mounts(triton)["models"]["readOnly"] is True
    # the metadata ConfigMap, mounted whole (a subPath mount never sees the kubelet's refresh)
    meta = _mounts(watcher)["nexus-meta"]
    assert meta == _mounts(sync)["nexus-meta"] and meta["readOnly"] is True and "subPath" not in meta
    assert env["NEXUS_META_PATH"] == env_of(sync)["NEXUS_META_PATH"]
    # Triton's gRPC endpoint over loopback, with the admin key Triton's restricted repository API wants
    grpc_port = int(re.search(r"--grpc-port=(\d+)", " ".join(triton["args"])).group(1))
    assert env["MODEL_SERVER_URL"] == env_of(container(spec, "proxy"))["MODEL_SERVER_URL"]
    assert env["MODEL_SERVER_URL"] == f"grpc://127.0.0.1:{grpc_port}" and "TRITON_URL" not in env
    assert env["TRITON_ADMIN_KEY"] == env_of(triton)["TRITON_ADMIN_KEY"]
    assert env["TRITON_ADMIN_KEY"]["secretKeyRef"]["name"].endswith("-triton-admin")
    assert env["WATCH_INTERVAL_S"] == "2" and env["WATCH_META_URI"] == "s3://control-plane/nexus_meta.json"
    # every variable the sync gets (S3, credentials, serving settings): the same config for every version
    assert {k: v for k, v in env.items() if k in env_of(sync)} == env_of(sync)
    # metrics on the pod's address, for the kubelet's liveness probe (and listed scrapers)
    assert env["WATCH_METRICS_HOST"] == "0.0.0.0"
    (port,) = watcher["ports"]
    assert port == {"name": "watch-metrics", "containerPort": int(env["WATCH_METRICS_PORT"]), "protocol": "TCP"}
    assert watcher["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "watch-metrics"}
    assert "readinessProbe" not in watcher, "the pod's readiness stays the proxy's /readyz"
    assert "nvidia.com/gpu" not in watcher["resources"].get("limits", {})
    assert _mounts(watcher)["watcher-tmp"]["mountPath"] == "/tmp"


def test_watcher_gets_s3_credentials_and_triton_still_none() -> None:
    objects = render_chart(WATCHER_CASE)
    spec = pod_spec(objects)
    env = env_of(container(spec, "watcher"))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "nexus-aws", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "nexus-aws"
    for name in ("triton", "proxy"):
        assert not [k for k in env_of(container(spec, name)) if k.startswith("AWS_")], name
    assert "TRITON_ADMIN_KEY" not in env_of(container(spec, "proxy"))
    # IRSA: the webhook still skips Triton and the proxy, so the role reaches the sync and the watcher only
    (deployment,) = by_kind(objects, "Deployment")
    skipped = deployment["spec"]["template"]["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"]
    assert set(skipped.split(",")) == {"triton", "proxy"}


def test_watcher_keeps_the_pod_on_a_metadata_change() -> None:
    """With the watcher, a new metadata updates the ConfigMap in place: no checksum, so the Deployment stays."""
    first = render_chart({"watcher": {"enabled": True}, "nexusMeta": {"content": '{"version": 1}'}})
    second = render_chart({"watcher": {"enabled": True}, "nexusMeta": {"content": '{"version": 2}'}})
    (one,), (two,) = by_kind(first, "Deployment"), by_kind(second, "Deployment")
    assert "checksum/nexus-meta" not in one["spec"]["template"]["metadata"]["annotations"]
    assert one["spec"]["template"] == two["spec"]["template"]
    assert meta_config_map(first)["data"] != meta_config_map(second)["data"]


def test_watcher_egress_and_metrics_ingress() -> None:
    """The watcher reads S3 through the pod's egress rules (as the sync does); its metrics only from listed peers."""
    (policy,) = by_kind(render_chart(WATCHER_CASE), "NetworkPolicy")
    (default_policy,) = by_kind(render_chart({}), "NetworkPolicy")
    assert policy["spec"]["egress"] == default_policy["spec"]["egress"]
    (rule,) = [r for r in policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {"watch-metrics"}]
    assert rule["from"] == [{"namespaceSelector": {}}]
    (closed,) = by_kind(render_chart({"watcher": {"enabled": True}}), "NetworkPolicy")
    assert all(p["port"] != "watch-metrics" for r in closed["spec"]["ingress"] for p in r["ports"])


@pytest.mark.parametrize(
    ("watcher", "message"),
    [
        pytest.param({"intervalSeconds": 0}, "watcher.intervalSeconds", id="interval-0"),
        pytest.param({"metricsPort": 8000}, "watcher.metricsPort", id="port-of-triton"),
        pytest.param({"metricsPort": 8080}, "watcher.metricsPort", id="port-of-the-proxy"),
    ],
)
def test_bad_watcher_values_are_refused(watcher: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render_chart({"watcher": {"enabled": True, **watcher}})


def test_notes_say_how_models_are_updated() -> None:
    def notes(values: dict[str, Any]) -> str:
        return next(text for path, text in render_files(values).items() if path.endswith("NOTES.txt"))

    assert "rolls the Deployment" in notes({})
    assert "rollout restart" in notes({"nexusMeta": {"existingConfigMap": "cm"}})
    with_watcher = notes({"watcher": {"enabled": True}})
    assert "-c watcher" in with_watcher and "recommended" not in with_watcher
    assert "recommended" in notes({"watcher": {"enabled": True}, "replicaCount": 2})
    prefix = notes({"watcher": {"enabled": True, "metaUri": "s3://bucket/models/"}})
    assert "under s3://bucket/models/ is one model's metadata" in prefix and "-c watcher" in prefix
    assert "nexusMeta" not in prefix and "placeholder" not in prefix


def test_chart_watcher_defaults_match_the_code() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["watcher"]
    code = WatchSettings()
    assert values["enabled"] is False
    assert values["intervalSeconds"] == code.interval_s and values["metricsPort"] == code.metrics_port
    assert values["metaUri"] == "" and SyncSettings().meta_uri is None


KEYS_FILE = '{"tenants": {"team-a": {"keys": ["key-a"], "weight": 3}, "team-b": {"keys": ["key-b"]}}}'


def _keys_mount(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (mount,) = [m for m in container(spec, "proxy")["volumeMounts"] if m["name"] == "api-keys"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "api-keys"]
    return mount, volume


@pytest.mark.parametrize(
    ("keys_file", "secret_name"),
    [
        pytest.param({"content": KEYS_FILE}, "nexus-nexus-dataplane-api-keys", id="content"),
        pytest.param({"existingSecret": "team-keys", "secretKey": "teams.yaml"}, "team-keys", id="existing-secret"),
    ],
)
def test_keys_file_is_a_secret_folder_mounted_read_only(keys_file: dict[str, str], secret_name: str) -> None:
    """The proxy reads API_KEYS_FILE from a Secret's folder: a folder mount (no subPath) is updated in place
    by the kubelet, so a rotated Secret reaches the running proxy without a restart."""
    objects = render_chart({"proxy": {"keysFile": keys_file}})
    spec = pod_spec(objects)
    mount, volume = _keys_mount(spec)
    assert mount["readOnly"] is True and "subPath" not in mount
    assert volume["secret"]["secretName"] == secret_name
    key = keys_file.get("secretKey", "keys.json")
    assert volume["secret"]["items"] == [{"key": key, "path": key}]
    assert volume["secret"]["defaultMode"] == 0o440  # the pod's group (fsGroup) reads it, nobody else
    env = env_of(container(spec, "proxy"))
    assert env["API_KEYS_FILE"] == f"{mount['mountPath']}/{key}" and "API_KEYS" not in env
    # its own folder: not under the metadata ConfigMap's read-only /etc/nexus
    assert not mount["mountPath"].startswith("/etc/nexus/")
    for name in ("sync", "triton"):
        assert "API_KEYS_FILE" not in env_of(container(spec, name)), name
        assert "api-keys" not in {m["name"] for m in container(spec, name).get("volumeMounts", [])}, name
    secrets = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-api-keys")]
    if "content" in keys_file:
        (secret,) = secrets
        assert base64.b64decode(secret["data"][key]).decode() == KEYS_FILE
    else:
        assert secrets == []
    # a new Secret must not roll the pods: no checksum of it on the template
    (deployment,) = by_kind(objects, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert not [k for k in annotations if "api-keys" in k]


def test_no_keys_file_by_default() -> None:
    spec = pod_spec(render_chart({}))
    assert "API_KEYS_FILE" not in env_of(container(spec, "proxy"))
    assert "api-keys" not in {v["name"] for v in spec["volumes"]}


def test_api_keys_and_keys_file_are_refused_together() -> None:
    """The proxy refuses both at start-up; the chart says so at install time."""
    values = {"proxy": {"apiKeys": {"existingSecret": "keys"}, "keysFile": {"content": KEYS_FILE}}}
    with pytest.raises(helm.HelmError, match=r"apiKeys\.existingSecret"):
        render_chart(values)


def test_keys_file_notes_say_how_to_rotate() -> None:
    notes = render_files({"proxy": {"keysFile": {"content": KEYS_FILE}}})
    (text,) = [t for path, t in notes.items() if path.endswith("NOTES.txt")]
    assert "Tenants are on" in text and "no restart" in text


# --- the memory budget (residency.*; off by default) ----------------------------------------------------------
RESIDENCY_CASE = next(case.values[0] for case in CHART_CASES if case.id == "residency")
RESIDENCY_ENV = (
    "MODEL_MEMORY_BUDGET",
    "PINNED_MODELS",
    "RESIDENCY_HOST",
    "RESIDENCY_PORT",
    "RESIDENCY_URL",
    "RESIDENCY_KEY",
)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="default"),
        pytest.param({"watcher": {"enabled": True}}, id="watcher"),
        pytest.param({"watcher": {"enabled": True}, "residency": {"memoryBudget": ""}}, id="empty-budget"),
    ],
)
def test_no_budget_changes_nothing(values: dict[str, Any]) -> None:
    """Off: every model loaded at start, no residency variable anywhere, no reports volume, no residency key."""
    objects = render_chart(values)
    spec = pod_spec(objects)
    args = container(spec, "triton")["args"]
    assert [a for a in args if a.startswith("--load-model")] == ["--load-model=*"]
    assert "--strict-readiness=true" in args
    for item in spec["containers"]:
        assert not set(env_of(item)) & set(RESIDENCY_ENV), item["name"]
    assert "memory-reports" not in {v["name"] for v in spec["volumes"]}
    assert not [s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-residency")]
    if values.get("watcher"):
        assert "dshm" not in _mounts(container(spec, "watcher"))


@pytest.mark.parametrize(
    ("pinned", "loads"),
    [
        pytest.param(["demo_mlp", "narrow.v2"], ["demo_mlp", "narrow.v2"], id="pinned"),
        pytest.param([], [], id="nothing-pinned"),
    ],
)
def test_a_budget_loads_the_pinned_models_and_points_the_proxy_at_the_decider(
    pinned: list[str], loads: list[str]
) -> None:
    values = {**RESIDENCY_CASE, "residency": {"memoryBudget": "1500MiB", "pinned": pinned}}
    spec = pod_spec(render_chart(values))
    triton, watcher, proxy = container(spec, "triton"), container(spec, "watcher"), container(spec, "proxy")
    args = triton["args"]
    assert [a.partition("=")[2] for a in args if a.startswith("--load-model")] == loads
    assert "--strict-readiness=false" in args and "--exit-on-error=false" in args
    env = env_of(watcher)
    assert env["MODEL_MEMORY_BUDGET"] == "1500MiB" and env["PINNED_MODELS"] == ",".join(pinned)
    # the decider's API on the pod's loopback, where the proxy asks it; not a port of the pod
    assert env["RESIDENCY_HOST"] == "127.0.0.1" and env["RESIDENCY_PORT"] == "9103"
    assert env_of(proxy)["RESIDENCY_URL"] == f"http://127.0.0.1:{env['RESIDENCY_PORT']}"
    assert [p["containerPort"] for p in watcher["ports"]] == [int(env["WATCH_METRICS_PORT"])]
    # the stubs' reports are filed by the repository's path: the same in both
    assert _mounts(watcher)["models"]["mountPath"] == _mounts(triton)["models"]["mountPath"] == env["MODEL_REPOSITORY"]
    for name in ("triton", "sync"):
        assert not set(env_of(container(spec, name))) & set(RESIDENCY_ENV), name


@pytest.mark.parametrize("values", CHART_CASES)
def test_with_a_budget_the_memory_reports_have_a_volume_of_their_own(values: dict[str, Any]) -> None:
    """The stubs (Triton) write their reports, the decider (watcher) makes their folder and reads them: a small
    emptyDir of medium Memory at the reports' path in those two, writable, nested in Triton's /dev/shm. The watcher
    does not mount the /dev/shm of the requests' tensors."""
    spec = pod_spec(render_chart(values))
    volumes = {v["name"]: v for v in spec["volumes"]}
    holders = {}
    for item in spec["initContainers"] + spec["containers"]:
        for mount in item["volumeMounts"]:
            if mount["name"] == "memory-reports":
                assert mount == {"name": "memory-reports", "mountPath": MEMORY_REPORTS}, item["name"]
                holders[item["name"]] = {m["mountPath"]: m["name"] for m in item["volumeMounts"]}
    if "residency" not in values:
        assert holders == {} and "memory-reports" not in volumes
        return
    assert set(holders) == {"triton", "watcher"}
    assert volumes["memory-reports"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Mi"}
    assert holders["triton"]["/dev/shm"] == "dshm"  # nested: Triton's other /dev/shm files stay on dshm
    assert "/dev/shm" not in holders["watcher"] and "dshm" not in holders["watcher"].values()


@pytest.mark.parametrize(
    ("key", "secret_name"),
    [
        pytest.param({}, "nexus-nexus-dataplane-residency", id="chart-secret"),
        pytest.param({"existingSecret": "residency", "secretKey": "k"}, "residency", id="existing-secret"),
    ],
)
def test_only_the_watcher_and_the_proxy_hold_the_residency_key(key: dict[str, str], secret_name: str) -> None:
    """The decider's API answers only calls with RESIDENCY_KEY: the watcher checks it, the proxy sends it; Triton
    (which runs the models' code) and the init container never get it. The chart's Secret is random."""
    values = {**RESIDENCY_CASE, "residency": {**RESIDENCY_CASE["residency"], "key": key}}
    objects = render_chart(values)
    spec = pod_spec(objects)
    holders = {c["name"] for c in spec["initContainers"] + spec["containers"] if "RESIDENCY_KEY" in env_of(c)}
    assert holders == {"watcher", "proxy"}
    refs = [env_of(container(spec, name))["RESIDENCY_KEY"]["secretKeyRef"] for name in sorted(holders)]
    assert refs[0] == refs[1] and refs[0]["name"] == secret_name
    made = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-residency")]
    if key:
        assert made == []
    else:
        (secret,) = made
        assert secret["metadata"]["name"] == secret_name
        assert len(base64.b64decode(secret["data"][refs[0]["key"]])) == 32


def test_a_budget_from_a_values_file_keeps_its_digits() -> None:
    """A number in a values file is a float64; written as 8e+09 it would not parse."""
    values = {"watcher": {"enabled": True}, "residency": {"memoryBudget": 8000000000.0}}
    assert env_of(container(pod_spec(render_chart(values)), "watcher"))["MODEL_MEMORY_BUDGET"] == "8000000000"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"residency": {"memoryBudget": "8GiB"}}, r"needs watcher\.enabled=true", id="no-watcher"),
        pytest.param(
            {"watcher": {"enabled": True}, "residency": {"memoryBudget": "lots"}},
            r"residency\.memoryBudget \"lots\"",
            id="bad-budget",
        ),
        pytest.param(
            {"watcher": {"enabled": True}, "residency": {"pinned": ["demo_mlp"]}},
            r"residency\.pinned needs residency\.memoryBudget",
            id="pinned-without-budget",
        ),
        pytest.param(
            {"watcher": {"enabled": True}, "residency": {"memoryBudget": "8GiB", "pinned": "demo_mlp"}},
            r"residency\.pinned: a list",
            id="pinned-not-a-list",
        ),
        pytest.param(
            {"watcher": {"enabled": True}, "residency": {"memoryBudget": "8GiB", "pinned": ["a/b"]}},
            r'"a/b" is not a model name',
            id="pinned-not-a-name",
        ),
        pytest.param(
            {**RESIDENCY_CASE, "residency": {"memoryBudget": "8GiB", "pinned": ["missing"]}},
            r'"missing" is not one of nexusMeta\.models',
            id="pinned-not-published",
        ),
        pytest.param(
            {"watcher": {"enabled": True}, "residency": {"memoryBudget": "8GiB", "port": 9102}},
            r"residency\.port \(9102\)",
            id="port-of-the-watchers-metrics",
        ),
    ],
)
def test_bad_residency_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render_chart(values)


def test_chart_residency_defaults_match_the_code() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["residency"]
    code = WatchSettings()
    assert values == {
        "memoryBudget": "",
        "pinned": [],
        "port": code.residency_port,
        "key": {"existingSecret": "", "secretKey": "residency-key"},
    }
    assert code.memory_budget is None and code.pinned == ()


def test_notes_say_what_a_budget_does() -> None:
    def notes(values: dict[str, Any]) -> str:
        return next(text for path, text in render_files(values).items() if path.endswith("NOTES.txt"))

    assert "Memory budget" not in notes({})
    text = notes(RESIDENCY_CASE)
    assert "Memory budget 8GiB: Triton starts with demo_mlp loaded" in text and "-c watcher" in text


def test_an_s3_prefix_is_mirrored_into_a_directory_the_watcher_alone_writes() -> None:
    """With watcher.metaUri a prefix of many models the watcher mirrors it into an emptyDir where the ConfigMap would
    be: every reader takes it as a directory of models, Triton starts without its strict flags, and there is no
    metadata ConfigMap to drift from S3."""
    objects = render_chart({"watcher": {"enabled": True, "metaUri": "s3://bucket/models/"}})
    spec = pod_spec(objects)
    for item in _meta_readers(spec):
        assert env_of(item)["NEXUS_META_PATH"] == "/etc/nexus", item["name"]
        assert _mounts(item)["nexus-meta"]["readOnly"] is (item["name"] == "proxy"), item["name"]
    for name in ("sync", "watcher"):  # the sync mirrors it before Triton starts, so a new pod starts with every model
        assert env_of(container(spec, name))["WATCH_META_URI"] == "s3://bucket/models/"
    assert "WATCH_META_URI" not in env_of(container(spec, "proxy"))
    assert {v["name"]: v for v in spec["volumes"]}["nexus-meta"] == {
        "name": "nexus-meta",
        "emptyDir": {"sizeLimit": "64Mi"},
    }
    assert not [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-meta")]
    assert "--strict-readiness=false" in " ".join(container(spec, "triton")["args"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"watcher": {"metaUri": "s3://bucket/models/"}}, "set watcher.enabled=true", id="watcher-off"),
        pytest.param(
            {"watcher": {"enabled": True, "metaUri": "s3://bucket/models/"}, "nexusMeta": {"models": MANY_MODELS}},
            "set one source",
            id="and-models",
        ),
    ],
)
def test_an_s3_prefix_with_another_source_or_no_watcher_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render_chart(values)
