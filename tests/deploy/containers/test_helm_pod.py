"""The Helm chart's pod started for real with `podman kube play`: sync, then Triton, the proxy and the watcher,
serving three demo models of different shapes from one ConfigMap (`nexusMeta.models`, one key per model, mounted
as the metadata directory); the proxy's tensors reach Triton through the /dev/shm emptyDir both mount.
It runs with a memory budget (`residency.memoryBudget`, room for the three, none pinned), as compose's test runs
without one: the pod is ready with no model loaded, each model loads on its first request (the watcher's decider,
called by the proxy with the chart's residency key), and the stubs' memory reports reach the decider through the
`memory-reports` emptyDir Triton and the watcher mount. A second pod takes the models' metadata from an S3 prefix
(`watcher.metaUri`): mirrored by the init container and then by the watcher into the metadata emptyDir.

The chart is rendered by the real Helm engine (helm-python-sdk) with the values a user passes for a CPU
node: images, S3 endpoint and bucket, the metadata of each model (`--set-file nexusMeta.models.<name>=`), a
credentials Secret.
The pod runs with the chart's own commands, env, security contexts and read-only mounts. podman 4.3 plays it
with these changes, each a limit of podman, not of the chart:
- init containers fail in podman 4.3 ("failed to remove once init container ... as it is running"), so the
  `sync` init container is played first as a pod of its own, must exit 0, and the rest is played after it;
- so that the two plays share the model repository, the `models` emptyDir becomes a named volume;
  the other emptyDirs (/tmp, /dev/shm, the memory reports) become host folders of mode 1777, as Kubernetes
  makes them (podman 4.3 makes them root's, mode 0755, and Triton's Python backend, uid 1000, then cannot
  create its shared memory: "Unable to initialize shared memory key ... Permission denied", measured);
- podman 4.3 cannot read Kubernetes Secrets for `secretKeyRef` env ("secret ... is not valid JSON",
  measured), so the played copy carries the secrets' values inline; nor does it expand `$(VAR)` in `command`
  and `args` as the kubelet does (measured: the argument stays `$(VAR)`), so the played copy has Triton's
  restricted-API keys written in; likewise the tenants' keys Secret volume
  becomes a host folder holding the Secret's file (readable by all: podman applies no `defaultMode`/`fsGroup`
  to a host folder);
- with no cluster there is no Service: the proxy's port gets a hostPort on loopback;
- probes go: podman runs an httpGet probe as `curl` inside the container, which our images do not have
  (the kubelet makes the request itself), so the liveness check failed and podman killed Triton (measured);
  Triton's exec probes (the watchdog script from its ConfigMap) would need systemd timers to run at all.
Not covered by podman and checked as rendered manifests against Kubernetes 1.30's schemas instead
(tests/deploy/test_helm.py): GPU resources and toleration, Service, NetworkPolicy, HPA, PDB, probes
(this test polls /readyz itself) and preStop hooks.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from nexusml.command import demo
from nexusml.core import memory
from nexusml.core.settings import RESIDENCY_HEADER
from nexusml.testing.environment import free_port
from proxy.middleware import LOAD_WAIT_HEADER
from tests.deploy.conftest import by_kind, render_chart
from tests.deploy.containers.conftest import (
    KEYS_FILE,
    MODELS,
    TEAM_KEY,
    assert_serves,
    assert_serves_all,
    assert_shared_memory,
    assert_tenants_enforced,
    http,
    loopback_get,
    publish_arguments,
    row,
    wait_ready,
)
from tests.deploy.containers.podman import DEMO_IMAGE, NEXUS_IMAGE, S3_IMAGE, TIMINGS, TRITON_IMAGE, Podman

# The first test also builds the images (minutes on a fresh machine): the suite's 300 s is too short.
pytestmark = pytest.mark.timeout(1800)

BUCKET = "nexus-models"
# Room for the three demo models (small MLPs, one Python-backend stub each), so none is unloaded for another.
MEMORY_BUDGET = "4GiB"
# The stubs write their reports every second from the end of their load: a bounded wait for the decider to count them.
MEASURED_WAIT_S = 30
# The user's S3 credentials Secret (docs/deployment.md: kubectl create secret generic nexus-aws ...); moto takes any.
AWS_SECRET = {"AWS_ACCESS_KEY_ID": "nexus-test", "AWS_SECRET_ACCESS_KEY": "nexus-test-secret"}


def image_values(image: str) -> dict[str, str]:
    repository, _, tag = image.rpartition(":")
    return {"repository": repository, "tag": tag}


@dataclass
class PodBed:
    """A network with the S3 stand-in on it, and names for everything the test creates."""

    podman: Podman
    folder: Path
    name: str

    @property
    def network(self) -> str:
        return self.name

    @property
    def s3(self) -> str:
        return f"{self.name}-s3"

    @property
    def volume(self) -> str:
        return f"{self.name}-models"

    @property
    def config_map(self) -> str:
        """The chart's metadata ConfigMap under a name of this run's (kube play keeps it as a volume of that name)."""
        return f"{self.name}-meta"

    @property
    def probe_config_map(self) -> str:
        """The chart's ConfigMap of Triton's probe script, likewise."""
        return f"{self.name}-probe"

    def config_map_name(self, chart_name: str) -> str:
        return self.probe_config_map if chart_name.endswith("-triton-probe") else self.config_map

    def s3_environment(self) -> list[str]:
        values = {**AWS_SECRET, "AWS_ENDPOINT_URL": f"http://{self.s3}:9000", "AWS_REGION": "us-east-1"}
        return [arg for key, value in values.items() for arg in ("--env", f"{key}={value}")]


@pytest.fixture
def bed(podman: Podman, images: tuple[str, ...], tmp_path: Path) -> Iterator[PodBed]:
    tmp_path.chmod(0o777)  # the demo publisher runs as uid 1000 and writes the metadata here
    bed = PodBed(podman, tmp_path, f"nexus-helm-test-{os.getpid()}")
    try:
        podman("network", "create", bed.network)
        podman("run", "--detach", "--name", bed.s3, "--network", bed.network, S3_IMAGE)
        yield bed
    finally:
        with TIMINGS.step("remove the pods, volume, S3 and network"):
            for pod in (bed.name, f"{bed.name}-sync"):
                podman("pod", "rm", "--force", "--time", "10", pod, check=False)
            podman("rm", "--force", "--time", "5", bed.s3, check=False)
            for volume in (bed.volume, bed.config_map, bed.probe_config_map):
                podman("volume", "rm", "--force", volume, check=False)
            podman("network", "rm", "--force", bed.network, check=False)


def publish_models(bed: PodBed, specs: tuple[demo.DemoSpec, ...]) -> dict[str, str]:
    """The control plane's step: each model into the bucket, its metadata written into one directory (one file
    per model); each model's metadata text back, by name (the chart's `nexusMeta.models`)."""
    directory = bed.folder / "meta"
    directory.mkdir()
    directory.chmod(0o777)  # the demo publisher runs as uid 1000
    for spec in specs:
        bed.podman(
            "run", "--rm", "--network", bed.network, *bed.s3_environment(), "--env", f"MODEL_BUCKET={BUCKET}",
            "--env", "HOME=/tmp", "--volume", f"{directory}:/out", DEMO_IMAGE,
            "publish-demo", "--meta", "/out", "--workdir", "/tmp/demo", *publish_arguments(spec),
        )  # fmt: skip
    return {spec.name: (directory / f"{spec.name}.json").read_text() for spec in specs}


def secret_values(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    found = {"nexus-aws": dict(AWS_SECRET)}
    for secret in by_kind(objects, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        found[secret["metadata"]["name"]] = {**data, **(secret.get("stringData") or {})}
    return found


def inline_secrets(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> None:
    """`secretKeyRef` env -> its value (podman 4.3 cannot read them); optional keys that are absent go."""
    env = []
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            env.append(item)
        elif ref["key"] in secrets[ref["name"]]:
            env.append({"name": item["name"], "value": secrets[ref["name"]][ref["key"]]})
        else:
            assert ref.get("optional"), f"{container['name']}: secret {ref['name']} has no key {ref['key']}"
    container["env"] = env


def expand_references(container: dict[str, Any]) -> None:
    """`$(NAME)` in `command` and `args` -> the container's env value of NAME, as the kubelet expands them."""
    values = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    for field in ("command", "args"):
        if field in container:
            container[field] = [
                re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), str(arg))
                for arg in container[field]
            ]


def pods_for_podman(objects: list[dict[str, Any]], bed: PodBed, port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod as two pods podman 4.3 can play: the init step, then the rest (see the docstring)."""
    (deployment,) = by_kind(objects, "Deployment")
    template = copy.deepcopy(deployment["spec"]["template"])
    spec = template["spec"]
    secrets = secret_values(objects)
    for volume in spec["volumes"]:
        if volume["name"] == "models":
            volume.pop("emptyDir")
            volume["persistentVolumeClaim"] = {"claimName": bed.volume}
        elif "emptyDir" in volume:
            folder = bed.folder / volume["name"]
            folder.mkdir()
            folder.chmod(0o1777)  # what an emptyDir is in Kubernetes; podman's are root's, mode 0755
            volume.pop("emptyDir")
            volume["hostPath"] = {"path": str(folder), "type": "Directory"}
        elif "configMap" in volume:
            volume["configMap"]["name"] = bed.config_map_name(volume["configMap"]["name"])
        elif "secret" in volume:
            folder = bed.folder / volume["name"]
            folder.mkdir()
            folder.chmod(0o755)
            for item in volume["secret"]["items"]:
                written = folder / item["path"]
                written.write_text(secrets[volume["secret"]["secretName"]][item["key"]])
                written.chmod(0o644)
            volume.pop("secret")
            volume["hostPath"] = {"path": str(folder), "type": "Directory"}
    for container in spec["initContainers"] + spec["containers"]:
        inline_secrets(container, secrets)
        expand_references(container)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            container.pop(probe, None)
    (proxy,) = [c for c in spec["containers"] if c["name"] == "proxy"]
    (http,) = [p for p in proxy["ports"] if p["name"] == "http"]
    http.update(hostPort=port, hostIP="127.0.0.1")

    def pod(name: str, containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        mounted = {m["name"] for c in containers for m in c.get("volumeMounts", [])}
        volumes = [v for v in spec["volumes"] if v["name"] in mounted]
        body = {k: v for k, v in spec.items() if k != "initContainers"}
        body.update(containers=containers, volumes=volumes, **extra)
        metadata = {"name": name, "labels": template["metadata"]["labels"]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}

    return pod(f"{bed.name}-sync", spec["initContainers"], restartPolicy="Never"), pod(bed.name, spec["containers"])


def play(bed: PodBed, objects: list[dict[str, Any]], pod: dict[str, Any]) -> None:
    """`podman kube play` of `pod` with the chart's ConfigMaps (metadata, Triton's probe) under this run's names."""
    config_args = []
    for config_map in by_kind(objects, "ConfigMap"):
        name = bed.config_map_name(config_map["metadata"]["name"])
        config_file = bed.folder / f"configmap-{name}.yaml"
        config_file.write_text(yaml.safe_dump({**config_map, "metadata": {**config_map["metadata"], "name": name}}))
        config_args += ["--configmap", str(config_file)]
    pod_file = bed.folder / f"{pod['metadata']['name']}.yaml"
    pod_file.write_text(yaml.safe_dump(pod))
    bed.podman("kube", "play", "--network", bed.network, *config_args, str(pod_file))


def start(bed: PodBed, objects: list[dict[str, Any]], port: int, label: str) -> None:
    """The chart's pod as podman plays it: the init container `sync` until it exits 0, then the rest until the
    proxy's /readyz answers 200 on `port`."""
    sync_pod, serving_pod = pods_for_podman(objects, bed, port)
    with TIMINGS.step(f"{label}: init container `sync` (kube play, wait for exit 0)"):
        play(bed, objects, sync_pod)
        code = bed.podman("wait", f"{bed.name}-sync-sync", timeout=600).stdout.strip()
        assert code == "0", bed.podman.logs(f"{bed.name}-sync-sync")
    with TIMINGS.step(f"{label}: Triton, proxy and watcher (kube play), until /readyz answers 200"):
        play(bed, objects, serving_pod)
        wait_ready(f"http://127.0.0.1:{port}")


def residency(bed: PodBed, objects: list[dict[str, Any]], key: bool = True) -> tuple[int, dict[str, Any]]:
    """The watcher's decider asked from inside the pod (its API listens on loopback): `GET /v1/residency`, with the
    key of the chart's residency Secret unless `key` is false."""
    (deployment,) = by_kind(objects, "Deployment")
    (watcher,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "watcher"]
    env = {item["name"]: item for item in watcher["env"]}
    port = env["RESIDENCY_PORT"]["value"]
    ref = env["RESIDENCY_KEY"]["valueFrom"]["secretKeyRef"]
    headers = {RESIDENCY_HEADER: secret_values(objects)[ref["name"]][ref["key"]]} if key else {}
    status, body = loopback_get(bed.podman, f"{bed.name}-watcher", f"http://127.0.0.1:{port}/v1/residency", headers)
    return status, json.loads(body)


def assert_nothing_loaded(bed: PodBed, objects: list[dict[str, Any]]) -> None:
    """Ready with no model loaded: none pinned and no model used before, so every model waits for its first request."""
    status, snapshot = residency(bed, objects)
    assert status == 200, snapshot
    states = {name: (m["state"], m["loads"]) for name, m in snapshot["models"].items()}
    assert states == {s.name: ("not_resident", 0) for s in MODELS}, snapshot


def assert_resident_and_measured(bed: PodBed, objects: list[dict[str, Any]]) -> None:
    """After the first requests: each model loaded once, none evicted, its memory measured from the stubs' reports,
    the whole within the budget; the decider's API refuses a call without the key."""
    deadline = time.monotonic() + MEASURED_WAIT_S
    while True:
        status, snapshot = residency(bed, objects)
        assert status == 200, snapshot
        found = {
            name: (m["state"], m["loads"], m["evictions"], isinstance(m["bytes"], int) and m["bytes"] > 0)
            for name, m in snapshot["models"].items()
        }
        expected = {s.name: ("resident", 1, 0, True) for s in MODELS}
        if found == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found == expected, snapshot
    assert 0 < snapshot["used_bytes"] <= snapshot["budget_bytes"] == memory.parse_bytes(MEMORY_BUDGET), snapshot
    status, refused = residency(bed, objects, key=False)
    assert (status, refused["error"]["code"]) == (401, "unauthorized"), refused


def test_chart_pod_serves_the_demo_models(bed: PodBed) -> None:
    podman, port = bed.podman, free_port()
    url = f"http://127.0.0.1:{port}"
    with podman.explaining(bed.name):
        with TIMINGS.step(f"helm pod: publish {len(MODELS)} demo models, render the chart (Helm engine)"):
            values = {
                "image": image_values(NEXUS_IMAGE),
                "tritonImage": image_values(TRITON_IMAGE),
                "nexusMeta": {"models": publish_models(bed, MODELS)},
                "s3": {"endpointUrl": f"http://{bed.s3}:9000", "bucket": BUCKET, "region": "us-east-1"},
                "aws": {"credentialsSecret": "nexus-aws"},
                # Runs beside them (it finds the version served: nothing to swap; compose's test swaps one),
                # and decides which models are loaded within the budget below.
                "watcher": {"enabled": True},
                # Residency: Triton starts with no model; the watcher's decider loads each on its first request.
                "residency": {"memoryBudget": MEMORY_BUDGET},
                # Teams: the tenants' keys file, from a Secret the chart makes (a host folder here, see above);
                # `POST /predict` is the README's model.
                "proxy": {"keysFile": {"content": json.dumps(KEYS_FILE)}, "defaultModel": MODELS[0].name},
            }
            objects = render_chart(values)
        start(bed, objects, port, "helm pod")
        assert_nothing_loaded(bed, objects)
        with TIMINGS.step(f"helm pod: first request to each of {len(MODELS)} models (each waits for its load)"):
            for spec in MODELS:
                headers = assert_serves(url, spec, TEAM_KEY)
                assert LOAD_WAIT_HEADER.lower() in headers, (spec.name, headers)
        assert_resident_and_measured(bed, objects)
        assert_tenants_enforced(url, MODELS[0])
        assert_serves_all(url, MODELS, TEAM_KEY)
        # The proxy's tensors through the dshm emptyDir both containers mount, with the key of the chart's Secret.
        (shm_secret,) = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-triton-shm")]
        shm_key = base64.b64decode(shm_secret["data"]["shm-key"]).decode()
        assert_shared_memory(url, podman, f"{bed.name}-triton", shm_key, TEAM_KEY)
        assert_serves_all(url, MODELS, TEAM_KEY)
        assert_serves(url, MODELS[0], TEAM_KEY, route="/predict")  # proxy.defaultModel
        watcher = f"{bed.name}-watcher"
        state = podman("inspect", watcher, "--format", "{{.State.Running}} {{.RestartCount}}").stdout.split()
        assert state == ["true", "0"], podman.logs(watcher)
        for container in ("triton", "proxy", "watcher"):
            inspected = podman(
                "inspect", f"{bed.name}-{container}", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}"
            ).stdout.split()
            assert inspected == ["1000:1000", "true"], (container, inspected)
        with TIMINGS.step("helm pod: stop (SIGTERM: the proxy drains, Triton drains)"):
            podman("pod", "stop", "--time", "90", bed.name, timeout=120)
        codes = {c: podman.exit_code(f"{bed.name}-{c}") for c in ("triton", "proxy", "watcher")}
        assert codes == {"triton": 0, "proxy": 0, "watcher": 0}, codes


# The control plane's side of an S3 prefix: put every `*.json` of /out under the prefix, or delete the keys named.
PREFIX_SCRIPT = """
import os, pathlib, sys
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
bucket, prefix, action = sys.argv[1:4]
if action == "put":
    for path in sorted(pathlib.Path("/out").glob("*.json")):
        s3.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())
else:
    for name in sys.argv[4:]:
        s3.delete_object(Bucket=bucket, Key=prefix + name)
"""
PREFIX = "control-plane/models/"


def control_plane(bed: PodBed, action: str, *names: str) -> None:
    bed.podman(
        "run", "--rm", "--network", bed.network, *bed.s3_environment(), "--volume", f"{bed.folder / 'meta'}:/out:ro",
        "--entrypoint", "python", DEMO_IMAGE, "-c", PREFIX_SCRIPT, BUCKET, PREFIX, action, *names,
    )  # fmt: skip


def test_chart_pod_follows_an_s3_prefix_of_models(bed: PodBed) -> None:
    """`watcher.metaUri` an S3 prefix: the init container mirrors it into the metadata emptyDir and installs every
    model before Triton starts; the watcher follows it: a metadata object deleted is its model removed."""
    podman, port = bed.podman, free_port()
    url = f"http://127.0.0.1:{port}"
    with podman.explaining(bed.name):
        with TIMINGS.step(f"helm pod, S3 prefix: publish {len(MODELS)} demo models, their metadata under the prefix"):
            publish_models(bed, MODELS)
            control_plane(bed, "put")
            values = {
                "image": image_values(NEXUS_IMAGE),
                "tritonImage": image_values(TRITON_IMAGE),
                "s3": {"endpointUrl": f"http://{bed.s3}:9000", "bucket": BUCKET, "region": "us-east-1"},
                "aws": {"credentialsSecret": "nexus-aws"},
                "watcher": {"enabled": True, "metaUri": f"s3://{BUCKET}/{PREFIX}", "intervalSeconds": 1},
                "proxy": {"defaultModel": MODELS[0].name},
            }
            objects = render_chart(values)
        start(bed, objects, port, "helm pod, S3 prefix")
        assert_serves_all(url, MODELS)
        with TIMINGS.step("helm pod, S3 prefix: one model's metadata deleted, until the proxy no longer lists it"):
            control_plane(bed, "delete", f"{MODELS[-1].name}.json")
            assert_serves_all(url, MODELS[:-1])
        status, _, body = http(f"{url}/models/{MODELS[-1].name}/predict", {"input": row(MODELS[-1])})
        assert (status, body["error"]["code"]) == (404, "model_not_found"), body
        podman("pod", "stop", "--time", "90", bed.name, timeout=120)
        codes = {c: podman.exit_code(f"{bed.name}-{c}") for c in ("triton", "proxy", "watcher")}
        assert codes == {"triton": 0, "proxy": 0, "watcher": 0}, codes
