"""Sync then infer: the demo model served by the real tritonserver answers like the model in-process; and the
flags `nexus triton` starts it with."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nexusml.command import demo
from nexusml.core.metadata import BatchingHints
from nexusml.core.settings import load
from nexusml.sync import storage
from nexusml.testing.models import DEMO_SPEC, TEST_BUCKET, PublishedModel, sync_into
from nexusml.testing.servers import start_triton, triton_infer
from nexusml.testing.updates import unloadable
from nexusml.triton.server import TritonDistribution, TritonServer, command
from nexusml.triton.settings import TritonSettings

LOADS = ("--load-model", "--strict-readiness", "--exit-on-error")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, ["--load-model=*", "--strict-readiness=true", "--exit-on-error=true"], id="one-model"),
        pytest.param(
            {"NEXUS_META_PATH": "{directory}"},
            ["--load-model=*", "--strict-readiness=false", "--exit-on-error=false"],
            id="directory",
        ),
        pytest.param(
            {"MODEL_MEMORY_BUDGET": "2GiB"},
            ["--strict-readiness=false", "--exit-on-error=false"],
            id="budget-nothing-pinned",
        ),
        pytest.param(
            {"MODEL_MEMORY_BUDGET": "2GiB", "PINNED_MODELS": "alpha,beta", "NEXUS_META_PATH": "{directory}"},
            ["--load-model=alpha", "--load-model=beta", "--strict-readiness=false", "--exit-on-error=false"],
            id="budget-pinned",
        ),
        pytest.param(
            {"PINNED_MODELS": "alpha"},
            ["--load-model=*", "--strict-readiness=true", "--exit-on-error=true"],
            id="pinned-without-budget",
        ),
    ],
)
def test_what_triton_loads_at_start(environ: dict[str, str], expected: list[str], tmp_path: Path) -> None:
    """Without a budget every model loads at start; with one only the pinned models do (Triton's explicit mode
    loads nothing else), and a model deliberately not loaded must not make Triton unready or end it."""
    settings = load(TritonSettings, {k: v.format(directory=tmp_path) for k, v in environ.items()})
    dist = TritonDistribution(*(Path(f"/triton/{name}") for name in ("bin", "lib", "python", "stub")))
    flags = command(settings, dist, Path("/backends"))
    assert [flag for flag in flags if flag.startswith(LOADS)] == expected


@pytest.mark.integration
def test_concurrent_requests_are_batched_and_match_the_model_in_process(triton: TritonServer) -> None:
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(1 + i % 3, 5)).astype(np.float32) for i in range(48)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda rows: triton_infer(triton, "demo_mlp", rows).as_numpy("OUTPUT__0"), requests))
    for rows, answer in zip(requests, answers, strict=True):
        expected = demo.reference_outputs(DEMO_SPEC, rows.tolist())[0]
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-5)

    client = httpclient.InferenceServerClient(f"{triton.settings.host}:{triton.settings.http_port}")
    stats = client.get_inference_statistics("demo_mlp")["model_stats"][0]
    # Fewer executions than requests (warm-up requests included) means requests were batched together.
    assert int(stats["execution_count"]) < int(stats["inference_count"])


class Poisonable(torch.nn.Module):
    """Doubles its input, but fails the whole forward pass when any value is 13."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 13.0).any()):
            raise RuntimeError("poisoned input")
        return x * 2.0


@pytest.mark.integration
def test_one_bad_request_fails_alone(s3_client: Any, s3_env: dict[str, str], tmp_path: Path) -> None:
    artifact = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(Poisonable()), str(artifact))
    location = storage.ObjectLocation(TEST_BUCKET, "poison/1/model.pt")
    storage.upload(s3_client, location, artifact)
    meta = dataclasses.replace(
        demo.metadata(demo.DemoSpec(name="poison", width=4, outputs=4), str(location), artifact),
        # A long queue delay makes Triton hand all concurrent requests to one execute() call.
        batching=BatchingHints(max_batch_size=16, max_queue_delay_ms=200, preferred_batch_sizes=(16,)),
    )
    repository = tmp_path / "repo"
    sync_into(meta, s3_env, repository)
    server = start_triton(repository, tmp_path)
    try:
        rows = [np.full((1, 4), 13.0 if i == 3 else float(i), dtype=np.float32) for i in range(8)]

        def call(row: np.ndarray) -> np.ndarray | str:
            try:
                return triton_infer(server, "poison", row).as_numpy("OUTPUT__0")
            except InferenceServerException as err:
                return str(err)

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(call, rows))
        assert "poisoned input" in answers[3]
        for i, answer in enumerate(answers):
            if i != 3:
                np.testing.assert_array_equal(answer, rows[i] * 2)
        stats = httpclient.InferenceServerClient(f"{server.settings.host}:{server.settings.http_port}")
        executions = int(stats.get_inference_statistics("poison")["model_stats"][0]["execution_count"])
        assert executions < 8, "the requests were not batched, so the fallback was not exercised"
    finally:
        server.stop()


@pytest.mark.integration
def test_a_model_that_does_not_load_leaves_the_others_serving(
    demo_model: PublishedModel, s3_client: Any, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """One broken model among many (NEXUS_META_PATH a directory): Triton still starts, ready, serving the good one,
    and names the broken one."""
    broken = unloadable(dataclasses.replace(demo_model.meta, name="broken"), 1, s3_client)
    repository = tmp_path / "repo"
    sync_into(demo_model.meta, s3_env, repository)
    sync_into(broken, s3_env, repository)
    (tmp_path / "meta").mkdir()
    server = start_triton(repository, tmp_path, TRITON_ADMIN_KEY="admin", NEXUS_META_PATH=str(tmp_path / "meta"))
    try:
        rows = np.ones((1, DEMO_SPEC.width), dtype=np.float32)
        answer = triton_infer(server, demo_model.meta.name, rows).as_numpy("OUTPUT__0")
        expected = demo.build(DEMO_SPEC)(torch.from_numpy(rows))[0].detach().numpy()
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-5)
        failed = server.unavailable()
        assert list(failed) == ["broken"]
        assert "zip archive" in failed["broken"]  # Triton's reason: the artifact is not TorchScript
    finally:
        server.stop()
