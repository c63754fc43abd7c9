"""Sync then infer: the demo model served by the real tritonserver answers like the model in-process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient

from nexusml import demo
from nexusml.triton import TritonServer
from tests.conftest import DEMO_SPEC

pytestmark = pytest.mark.integration


def infer(server: TritonServer, model: str, rows: np.ndarray) -> httpclient.InferResult:
    """One request to Triton's own HTTP endpoint with `rows` as INPUT__0."""
    client = httpclient.InferenceServerClient(f"{server.settings.host}:{server.settings.http_port}")
    tensor = httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer(model, [tensor])


def test_concurrent_requests_are_batched_and_match_the_model_in_process(triton: TritonServer) -> None:
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(1 + i % 3, 5)).astype(np.float32) for i in range(48)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda rows: infer(triton, "demo_mlp", rows).as_numpy("OUTPUT__0"), requests))
    for rows, answer in zip(requests, answers, strict=True):
        expected = demo.reference_outputs(DEMO_SPEC, rows.tolist())[0]
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-5)

    client = httpclient.InferenceServerClient(f"{triton.settings.host}:{triton.settings.http_port}")
    stats = client.get_inference_statistics("demo_mlp")["model_stats"][0]
    # Fewer executions than requests (warm-up requests included) means requests were batched together.
    assert int(stats["execution_count"]) < int(stats["inference_count"])
