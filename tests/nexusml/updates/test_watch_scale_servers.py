"""Instances follow traffic against a real Triton: a model synced with one instance, requests that queue, the watcher
scales it to two (Triton's own config says so) while every request is answered, then back to one once quiet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from nexusml.command import demo
from nexusml.core.settings import load
from nexusml.triton.server import TritonServer
from nexusml.updates.watch import CatalogWatcher, WatchSettings, watcher
from tests.nexusml.updates.conftest import Served, served_catalog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BUCKET = "nexus-watch-scale-test"
SPEC = demo.DemoSpec(name="busy")
CLIENTS = 8  # enough to queue for one instance; one client alone never queues
# Long enough for a reload on a loaded CI machine; the loops end as soon as their condition holds.
BOUND_S = 180.0


@pytest.fixture(scope="module")
def served(s3_env: dict[str, str], s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`busy` synced with MIN_INSTANCE_COUNT=1 (of 2), one request a batch, served by a Triton with an admin key."""
    with served_catalog(
        tmp_path_factory.mktemp("watch-scale"),
        s3_env,
        s3_client,
        BUCKET,
        SPEC,
        BATCH_SIZE="1",  # one request an execution: concurrent requests queue for the instance
        BATCH_TIMEOUT_MS="0",
        MIN_INSTANCE_COUNT="1",
        INSTANCE_COUNT="2",
    ) as served:
        yield served


class Traffic:
    """`clients` threads sending requests until stopped, `pause_s` apart; every answer checked."""

    def __init__(self, triton: TritonServer, clients: int, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        # Built here, once: torch's seeded initialisation is not for threads at once.
        self.want = demo.reference_outputs(SPEC, [list(range(1, SPEC.width + 1))])[0]
        self.url = triton.http_url.split("://")[1]
        self.stop = threading.Event()
        self.answered = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(clients)]

    def _send(self) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=120)
        rows = np.arange(1, SPEC.width + 1, dtype=np.float32)[None, :]
        while not self.stop.is_set():
            tensor = httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            try:
                got = client.infer(SPEC.name, [tensor]).as_numpy("OUTPUT__0")
                np.testing.assert_allclose(got, self.want, rtol=1e-5, atol=1e-6)
            except Exception as err:  # every failure is the test's finding
                with self.lock:
                    self.failures.append(repr(err))
                continue
            with self.lock:
                self.answered += 1
            time.sleep(self.pause_s)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=BOUND_S)


def triton_count(triton: TritonServer) -> int:
    config = httpclient.InferenceServerClient(triton.http_url.split("://")[1]).get_model_config(SPEC.name)
    return sum(int(group.get("count", 1)) for group in config["instance_group"])


def poll_until(watching: CatalogWatcher, done: Callable[[], bool], traffic: Traffic) -> None:
    """Poll, as `nexus watch` does, until `done`."""
    deadline = time.monotonic() + BOUND_S
    while not done():
        assert time.monotonic() < deadline, f"not done after {BOUND_S:g} s of polls: {traffic.failures[:3]}"
        watching.poll()
        time.sleep(0.2)


def test_a_queueing_model_scales_up_under_traffic_and_back_down_when_quiet(served: Served) -> None:
    triton, env = served.triton, served.env
    watching = watcher(load(WatchSettings, {**env, "SCALE_UP_QUEUE_MS": "1", "SCALE_DOWN_IDLE_S": "1"}))
    assert isinstance(watching, CatalogWatcher)
    assert triton_count(triton) == 1

    def changes(direction: str) -> float | None:
        labels = {"model": SPEC.name, "direction": direction}
        return watching.metrics.registry.get_sample_value("nexus_model_scalings_total", labels)

    with Traffic(triton, CLIENTS) as busy:
        poll_until(watching, lambda: triton_count(triton) == 2, busy)
        answered = busy.answered
        poll_until(watching, lambda: busy.answered > answered + CLIENTS, busy)  # the new instances answer too
    assert busy.failures == []
    assert changes("up") == 1
    with Traffic(triton, 1, pause_s=0.05) as quiet:
        poll_until(watching, lambda: triton_count(triton) == 1, quiet)
        answered = quiet.answered
        poll_until(watching, lambda: quiet.answered > answered + 1, quiet)
    assert quiet.failures == []
    assert changes("down") == 1 and changes("failed") is None
    assert watching.metrics.registry.get_sample_value("nexus_model_instances", {"model": SPEC.name}) == 1
