"""The watcher of a directory against a real S3 (moto's server) and a real Triton.

A new file is a model loaded without a restart, a changed file swaps that model only, a removed file unloads its
model and deletes its folder, and a model Triton could not load at its start is loaded again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from nexusml.command import demo
from nexusml.core import catalog
from nexusml.core.settings import load
from nexusml.sync.pipeline import sync_catalog
from nexusml.sync.repository import Repository
from nexusml.sync.settings import SyncSettings
from nexusml.testing.models import PublishedModel, publish_into
from nexusml.testing.servers import restart_triton
from nexusml.triton.server import TritonServer
from nexusml.updates.watch import CatalogWatcher, WatchSettings, watcher
from tests.nexusml.updates.conftest import served_catalog

pytestmark = pytest.mark.integration

BUCKET = "nexus-watch-catalog-test"
# Small models of different shapes; one instance each keeps Triton light on a CPU.
ALPHA = demo.DemoSpec(name="alpha", hidden=16, layers=1)
BETA = demo.DemoSpec(name="beta", width=8, outputs=3, heads=2, hidden=16, layers=1)
GAMMA = demo.DemoSpec(name="gamma", width=3, outputs=1, hidden=16, layers=1, format="torch_export")


@dataclass
class Bed:
    directory: Path
    repository: Path
    triton: TritonServer
    env: dict[str, str]
    s3_client: Any

    def watcher(self, **extra: str) -> CatalogWatcher:
        made = watcher(load(WatchSettings, {**self.env, **extra}))
        assert isinstance(made, CatalogWatcher)
        return made

    def publish(self, spec: demo.DemoSpec) -> PublishedModel:
        return publish_into(spec, self.s3_client, self.directory, BUCKET)

    def client(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.triton.http_url.split("://")[1])

    def answer(self, spec: demo.DemoSpec) -> tuple[str, list[np.ndarray]]:
        """One inference of `spec.name`, unpinned: (version, every output)."""
        rows = np.arange(1, spec.width + 1, dtype=np.float32)[None, :]
        tensor = httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = self.client().infer(spec.name, [tensor])
        outputs = [result.as_numpy(f"OUTPUT__{i}") for i in range(spec.heads)]
        return result.get_response()["model_version"], outputs

    def expected(self, spec: demo.DemoSpec) -> list[np.ndarray]:
        return demo.reference_outputs(spec, [list(range(1, spec.width + 1))])


@pytest.fixture(scope="module")
def bed(s3_env: dict[str, str], s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """alpha version 1, synced from a directory and served by a Triton whose repository API wants `ADMIN_KEY`."""
    root = tmp_path_factory.mktemp("watch-catalog")
    with served_catalog(root, s3_env, s3_client, BUCKET, ALPHA, BATCH_TIMEOUT_MS="2", INSTANCE_COUNT="1") as served:
        yield Bed(served.directory, served.repository, served.triton, served.env, s3_client)


def test_a_new_file_is_a_new_model_loaded_without_a_restart(bed: Bed) -> None:
    watching = bed.watcher()
    bed.publish(BETA)
    assert watching.poll() == {"alpha": "served", "beta": "swapped"}
    version, outputs = bed.answer(BETA)
    assert version == "1"
    for got, want in zip(outputs, bed.expected(BETA), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert bed.answer(ALPHA)[0] == "1"
    assert watching.poll() == {}


def test_a_changed_file_swaps_that_model_only(bed: Bed) -> None:
    watching = bed.watcher()
    if "beta" not in Repository(bed.repository).models():
        bed.publish(BETA)
    watching.poll()
    started = watching.metrics.started._value.get()
    alpha2 = dataclasses.replace(ALPHA, version=2, seed=2)
    bed.publish(alpha2)
    assert watching.poll() == {"alpha": "swapped", "beta": "served"}
    assert watching.metrics.started._value.get() == started + 1
    version, outputs = bed.answer(alpha2)
    assert version == "2"
    np.testing.assert_allclose(outputs[0], bed.expected(alpha2)[0], rtol=1e-5, atol=1e-6)
    assert bed.answer(BETA)[0] == "1"
    assert Repository(bed.repository).versions("beta") == [1]


def test_a_removed_file_unloads_its_model_and_deletes_its_folder(bed: Bed) -> None:
    watching = bed.watcher()
    bed.publish(GAMMA)
    assert watching.poll()["gamma"] == "swapped"
    assert bed.client().is_model_ready("gamma")
    (bed.directory / "gamma.json").unlink()
    assert watching.poll()["gamma"] == "removed"
    assert not bed.client().is_model_ready("gamma")
    assert not (bed.repository / "gamma").exists()
    assert "gamma" not in Repository(bed.repository).sources()
    assert bed.client().is_model_ready("alpha")


def test_a_model_that_failed_to_load_at_triton_start_is_loaded_again(
    s3_env: dict[str, str], s3_client: Any, tmp_path: Path
) -> None:
    """A failure of the moment at Triton's start (here: a model file unreadable then, fine afterwards) leaves that
    model unavailable and the others served; the watcher loads it again, without a restart."""
    delta = dataclasses.replace(BETA, name="delta")
    with served_catalog(tmp_path, s3_env, s3_client, BUCKET, ALPHA, INSTANCE_COUNT="1") as served:
        publish_into(delta, s3_client, served.directory, BUCKET)
        sync_catalog(catalog.read(served.directory), load(SyncSettings, served.env))
        artifact = served.repository / "delta" / "1" / "model.pt"
        good = artifact.read_bytes()
        artifact.write_bytes(b"not yet")
        served.triton.stop()
        triton = restart_triton(served.triton, tmp_path)  # a directory's Triton: delta's failure does not stop it
        try:
            env = {**served.env, "MODEL_SERVER_URL": triton.grpc_url}
            bed = Bed(served.directory, served.repository, triton, env, s3_client)
            assert bed.client().is_model_ready("alpha") and not bed.client().is_model_ready("delta")
            watching = bed.watcher()
            assert watching.swapper.admin.unavailable().keys() == {"delta"}
            artifact.write_bytes(good)
            assert watching.heal() == ["delta"]
            np.testing.assert_allclose(bed.answer(delta)[1][0], bed.expected(delta)[0], rtol=1e-5, atol=1e-6)
            assert watching.heal() == []
        finally:
            triton.stop()
