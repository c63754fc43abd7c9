"""The proxy's metrics: one registry per app in one process; with several workers, every scrape is the sum."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from nexusml.testing.servers import ProxyProcess, finish_request, held_request
from nexusml.triton.server import TritonServer
from proxy.metrics import MODEL_LABELS, MULTIPROC_DIR_ENV, OTHER_MODELS, Metrics
from tests.proxy.conftest import BODY, answered_by, wait_for_both_workers

PREDICT_OK = 'nexus_proxy_requests_total{model="demo_mlp",route="/predict",status="200"}'
SCRAPE_OK = 'nexus_proxy_requests_total{model="",route="/metrics",status="200"}'
REQUESTS = 40
SCRAPES = 20


def sample(text: str, series: str) -> float | None:
    """The value of `series` (name and labels as exposed) in an exposition; None when it is absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def test_each_metrics_object_has_its_own_registry() -> None:
    in_flight = [1]
    first, second = Metrics(lambda: in_flight[0]), Metrics()  # the same names twice in one process: no error
    first.request_done("/predict", 200, 0.01, "demo_mlp")
    first.request_done("/predict", 200, 0.02, "demo_mlp")
    first.request_done("unmatched", 404, 0.001)
    first.batch_rows.labels("demo_mlp").observe(3)
    first.upstream_errors.labels("upstream_unavailable", "demo_mlp").inc()
    first.upstream_latency.labels("demo_mlp").observe(0.005)
    one, two = first.render().decode(), second.render().decode()
    assert sample(one, PREDICT_OK) == 2
    assert sample(one, 'nexus_proxy_requests_total{model="",route="unmatched",status="404"}') == 1
    assert sample(one, 'nexus_proxy_request_duration_seconds_count{model="demo_mlp",route="/predict"}') == 2
    assert sample(one, 'nexus_proxy_upstream_batch_rows_bucket{le="2.0",model="demo_mlp"}') == 0
    assert sample(one, 'nexus_proxy_upstream_batch_rows_bucket{le="4.0",model="demo_mlp"}') == 1
    assert sample(one, 'nexus_proxy_upstream_errors_total{code="upstream_unavailable",model="demo_mlp"}') == 1
    assert sample(one, 'nexus_proxy_upstream_duration_seconds_count{model="demo_mlp"}') == 1
    assert sample(one, "nexus_proxy_in_flight") == 1  # read from the worker's counter at scrape time
    in_flight[0] = 0
    assert sample(first.render().decode(), "nexus_proxy_in_flight") == 0
    assert sample(two, PREDICT_OK) is None
    assert sample(two, "nexus_proxy_in_flight") == 0
    assert "process_cpu_seconds_total" in one and "python_info" in one and "python_gc_objects_collected" in one
    assert "_created" not in one and "worker=" not in one
    assert not first.multiprocess
    assert first.content_type.startswith("text/plain; version=")


def post_predict(proxy: ProxyProcess) -> int:
    """One prediction on a connection of its own, so the kernel picks a worker for each."""
    request = urllib.request.Request(
        proxy.url + "/predict", data=BODY, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert "output" in json.loads(response.read())
        return response.status


def metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("nexus-proxy-metrics-*"))


@pytest.mark.integration
def test_two_workers_counts_add_up_on_every_scrape(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer, tmp_path: Path
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proxy = proxy_process(
        MODEL_SERVER_URL=triton.grpc_url, MODEL_NAME="demo_mlp", PROXY_WORKERS="2", TMPDIR=str(tmp), ACCESS_LOG="all"
    ).start()
    wait_for_both_workers(proxy)
    [directory] = metrics_dirs(tmp)  # the workers' shared files, in a fresh private directory
    assert [post_predict(proxy) for _ in range(REQUESTS)] == [200] * REQUESTS
    scrapes = []
    for _ in range(SCRAPES):  # each on a fresh connection: both workers answer some
        status, text = proxy.get("/metrics")
        assert status == 200
        scrapes.append(text.decode())
    assert [sample(text, PREDICT_OK) for text in scrapes] == [REQUESTS] * SCRAPES
    # Each scrape counts all earlier ones, whichever worker answered them (the first sees none yet).
    assert [sample(text, SCRAPE_OK) or 0 for text in scrapes] == list(range(SCRAPES))
    assert [sample(text, "nexus_proxy_in_flight") for text in scrapes] == [0] * SCRAPES
    assert all("worker=" not in text for text in scrapes)
    assert answered_by(proxy, "/predict") == {0, 1}
    assert answered_by(proxy, "/metrics") == {0, 1}
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0, proxy.log()
    assert not directory.exists()


@pytest.mark.integration
def test_two_workers_in_flight_is_the_pods_total(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer
) -> None:
    """The HPA's metric: predictions in progress on all workers, on every scrape."""
    proxy = proxy_process(
        MODEL_SERVER_URL=triton.grpc_url,
        MODEL_NAME="demo_mlp",
        PROXY_WORKERS="2",
        BODY_TIMEOUT_S="120",
        ACCESS_LOG="all",
    ).start()
    wait_for_both_workers(proxy)
    held = [held_request(proxy.port) for _ in range(6)]  # each on its own connection, spread over the workers

    def in_flight() -> float | None:
        status, text = proxy.get("/metrics")
        assert status == 200
        return sample(text.decode(), "nexus_proxy_in_flight")

    for _ in range(300):  # until every held request's head has reached its worker
        if in_flight() == len(held):
            break
        time.sleep(0.05)
    assert [in_flight() for _ in range(SCRAPES)] == [len(held)] * SCRAPES
    assert [finish_request(sock)[0] for sock in held] == [200] * len(held)
    assert [in_flight() for _ in range(SCRAPES)] == [0] * SCRAPES
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0, proxy.log()


def test_model_labels_are_capped() -> None:
    """Model names come from the operator's metadata, not from clients; even so a worker labels at most
    MODEL_LABELS of them by name, and a name keeps its label once given."""
    metrics = Metrics()
    labels = [metrics.model_label(f"model-{index}") for index in range(MODEL_LABELS + 5)]
    assert labels[:MODEL_LABELS] == [f"model-{index}" for index in range(MODEL_LABELS)]
    assert set(labels[MODEL_LABELS:]) == {OTHER_MODELS}
    assert metrics.model_label("model-0") == "model-0"


def test_tenant_series() -> None:
    metrics = Metrics()
    metrics.tenant_request("team-a", 3)
    metrics.tenant_request("team-a", 2)
    metrics.tenant_request("team-b", 1)
    metrics.tenant_rejected("team-a", "rate_requests")
    metrics.tenant_rejected("team-a", "rate_requests")
    metrics.tenant_rejected("team-b", "over_share")
    metrics.tenant_queue_wait("team-a", 0.003)
    metrics.tenant_reload_failed()
    text = metrics.render().decode()
    assert sample(text, 'nexus_proxy_tenant_requests_total{tenant="team-a"}') == 2
    assert sample(text, 'nexus_proxy_tenant_rows_total{tenant="team-a"}') == 5
    assert sample(text, 'nexus_proxy_tenant_rows_total{tenant="team-b"}') == 1
    assert sample(text, 'nexus_proxy_tenant_rejected_total{cause="rate_requests",tenant="team-a"}') == 2
    assert sample(text, 'nexus_proxy_tenant_rejected_total{cause="over_share",tenant="team-b"}') == 1
    assert sample(text, 'nexus_proxy_tenant_queue_wait_seconds_bucket{le="0.0025",tenant="team-a"}') == 0
    assert sample(text, 'nexus_proxy_tenant_queue_wait_seconds_bucket{le="0.005",tenant="team-a"}') == 1
    assert sample(text, "nexus_proxy_tenants_reload_errors_total") == 1


TENANT_SERIES_IN_MULTIPROCESS_MODE = """
from proxy.metrics import Metrics
first, second = Metrics(), Metrics()  # two workers' objects over one directory
first.tenant_request("team-a", 3)
second.tenant_request("team-a", 4)
second.tenant_rejected("team-a", "rate_rows")
first.tenant_queue_wait("team-a", 0.001)
first.tenant_reload_failed()
assert first.multiprocess
print(second.render().decode())
"""


def test_tenant_series_add_up_over_workers(tmp_path: Path) -> None:
    """prometheus-client picks multiprocess mode when it is imported, so this runs in a fresh interpreter."""
    env = {**os.environ, MULTIPROC_DIR_ENV: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", TENANT_SERIES_IN_MULTIPROCESS_MODE], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert sample(done.stdout, 'nexus_proxy_tenant_requests_total{tenant="team-a"}') == 2
    assert sample(done.stdout, 'nexus_proxy_tenant_rows_total{tenant="team-a"}') == 7
    assert sample(done.stdout, 'nexus_proxy_tenant_rejected_total{cause="rate_rows",tenant="team-a"}') == 1
    assert sample(done.stdout, 'nexus_proxy_tenant_queue_wait_seconds_count{tenant="team-a"}') == 1
    assert sample(done.stdout, "nexus_proxy_tenants_reload_errors_total") == 1
