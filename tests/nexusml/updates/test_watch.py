"""The watcher against a real S3 (moto's server) and a real Triton in explicit model control.

A good version goes live while requests keep being answered; a version that fails to download, verify, load or
pass the smoke test never serves, the old one answers throughout, the cause is recorded and not retried; an
older version is a rollback through the same path.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from nexusml.command import demo
from nexusml.core.metadata import ModelMetadata
from nexusml.core.probe import CANDIDATE_SUFFIX
from nexusml.core.settings import load
from nexusml.sync import pipeline
from nexusml.sync.repository import Repository
from nexusml.testing import updates
from nexusml.testing.environment import free_port
from nexusml.testing.models import DEMO_SPEC, PublishedModel, publish, sync_into
from nexusml.testing.polling import wait_until
from nexusml.testing.servers import ProxyProcess, start_triton
from nexusml.triton.server import TritonServer
from nexusml.updates.swap import served
from nexusml.updates.watch import STATE_FILE, S3Source, Watcher, WatchSettings, watcher

pytestmark = pytest.mark.integration

ADMIN_KEY = "test-admin-key"
# A bucket of this module's own: its versions must not overwrite the session's demo model (demo_mlp/1/...).
BUCKET = "nexus-watch-test"
ROW = np.array([[1, 2, 3, 4, 5]], dtype=np.float32)


@dataclass
class Bed:
    repository: Path
    meta_path: Path
    triton: TritonServer
    env: dict[str, str]
    published: dict[int, PublishedModel]

    def settings(self, **extra: str) -> WatchSettings:
        return load(WatchSettings, {**self.env, **extra})

    def publish(self, meta: ModelMetadata) -> None:
        """What the control plane does: write the metadata file (atomically, as it should)."""
        tmp = self.meta_path.with_name(".meta.tmp")
        tmp.write_text(meta.to_json())
        tmp.replace(self.meta_path)

    def answer(self) -> tuple[str, np.ndarray]:
        """One inference at the served model, unpinned, as the proxy sends it: (version, output)."""
        client = httpclient.InferenceServerClient(self.triton.http_url.split("://")[1])
        tensor = httpclient.InferInput("INPUT__0", list(ROW.shape), "FP32")
        tensor.set_data_from_numpy(ROW)
        result = client.infer("demo_mlp", [tensor])
        return result.get_response()["model_version"], result.as_numpy("OUTPUT__0")


@pytest.fixture(scope="module")
def bed(s3_env: dict[str, str], s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """Version 1 synced and served by a Triton whose repository API wants `ADMIN_KEY`; 2 and 3 published."""
    root = tmp_path_factory.mktemp("watch")
    s3_client.create_bucket(Bucket=BUCKET)
    published = {v: updates.good(v, s3_client, root / "published", BUCKET) for v in (1, 2, 3)}
    repository = root / "model_repository"
    sync_into(published[1].meta, s3_env, repository, BATCH_TIMEOUT_MS="2")
    meta_path = root / ".nexus_meta.json"
    meta_path.write_text(published[1].meta.to_json())
    triton = start_triton(repository, root, TRITON_ADMIN_KEY=ADMIN_KEY)
    env = {
        **s3_env,
        "NEXUS_META_PATH": str(meta_path),
        "MODEL_REPOSITORY": str(repository),
        "DEVICE": "cpu",
        "BATCH_TIMEOUT_MS": "2",
        "MODEL_SERVER_URL": triton.grpc_url,
        "TRITON_ADMIN_KEY": ADMIN_KEY,
        "WATCH_METRICS_PORT": "0",
    }
    yield Bed(repository, meta_path, triton, env, published)
    triton.stop()


def _serve(bed: Bed, version: int) -> Watcher:
    """Make `version` (one of the good ones) the served one; returns the watcher that did it."""
    watching = watcher(bed.settings())
    bed.publish(bed.published[version].meta)
    assert watching.poll() in ("swapped", "served")
    return watching


def _expected(bed: Bed, version: int) -> np.ndarray:
    return demo.reference_outputs(bed.published[version].spec, ROW.tolist())[0]


def test_a_good_version_goes_live_while_every_request_is_answered(bed: Bed) -> None:
    _serve(bed, 1)
    answers: list[str] = []
    errors: list[str] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            try:
                answers.append(bed.answer()[0])
            except Exception as err:  # any failure is the test's finding
                errors.append(str(err))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        watching = watcher(bed.settings())
        bed.publish(bed.published[2].meta)
        outcome = watching.poll()
    finally:
        done.set()
        sender.join()
    assert outcome == "swapped"
    assert errors == []
    # Version 1 answered until the switch, then version 2 (never back).
    assert answers and answers[0] == "1" and answers == sorted(answers)
    version, output = bed.answer()
    assert version == "2"
    np.testing.assert_allclose(output, _expected(bed, 2), rtol=1e-5)
    assert served(Repository(bed.repository), "demo_mlp") == bed.published[2].meta
    assert not list(bed.repository.glob(f"*{CANDIDATE_SUFFIX}"))
    assert watching.metrics.succeeded._value.get() == 1
    assert watching.metrics.served._value.get() == 2
    assert watching.poll() == "unchanged"


def test_an_older_version_is_a_rollback_through_the_same_path(bed: Bed) -> None:
    _serve(bed, 3)
    watching = watcher(bed.settings())
    bed.publish(bed.published[1].meta)
    assert watching.poll() == "swapped"
    version, output = bed.answer()
    assert version == "1"
    np.testing.assert_allclose(output, _expected(bed, 1), rtol=1e-5)


# (id, build the broken metadata, the cause recorded)
Broken = Callable[[Bed, Any, Path], ModelMetadata]
FAILURES = [
    pytest.param(lambda bed, s3, tmp: updates.missing(bed.published[1].meta, 11), "artifact_not_found", id="download"),
    pytest.param(lambda bed, s3, tmp: updates.corrupt(bed.published[1].meta, 12), "integrity", id="verify"),
    pytest.param(lambda bed, s3, tmp: updates.unloadable(bed.published[1].meta, 13, s3, BUCKET), "load", id="load"),
    pytest.param(lambda bed, s3, tmp: updates.wrong_shape(14, s3, tmp, BUCKET), "smoke_test", id="smoke-test-shape"),
]


@pytest.mark.parametrize(("broken", "cause"), FAILURES)
def test_a_broken_version_never_serves_and_is_not_retried(
    bed: Bed, s3_client: Any, tmp_path: Path, broken: Broken, cause: str
) -> None:
    _serve(bed, 2)
    meta = broken(bed, s3_client, tmp_path)
    watching = watcher(bed.settings())
    bed.publish(meta)
    assert watching.poll() == f"failed: {cause}"
    assert bed.answer()[0] == "2"
    assert served(Repository(bed.repository), "demo_mlp") == bed.published[2].meta
    assert meta.version not in Repository(bed.repository).versions("demo_mlp")  # nothing of it left behind
    assert not list(bed.repository.glob(f"*{CANDIDATE_SUFFIX}"))
    assert watching.metrics.failed.labels(cause)._value.get() == 1
    recorded = json.loads((bed.repository / STATE_FILE).read_text())["failed"]
    assert any(entry["version"] == meta.version and entry["cause"].startswith(cause) for entry in recorded.values())
    # Not retried: by this watcher, nor by a new one (a restart).
    assert watching.poll() == "unchanged"
    assert watching.metrics.started._value.get() == 1
    fresh = watcher(bed.settings())
    assert fresh.poll() == "failed before"
    assert fresh.metrics.started._value.get() == 0


def test_triton_unreachable_is_retried_not_marked(bed: Bed) -> None:
    _serve(bed, 2)
    watching = watcher(bed.settings(MODEL_SERVER_URL=f"grpc://127.0.0.1:{free_port()}", WATCH_LOAD_TIMEOUT_S="2"))
    bed.publish(bed.published[3].meta)
    assert watching.poll() == "retry: server"
    assert watching.poll() == "retry: server"
    assert bed.answer()[0] == "2"
    state = bed.repository / STATE_FILE
    marked = json.loads(state.read_text())["failed"] if state.exists() else {}
    assert all(entry["version"] != 3 for entry in marked.values())


def test_an_unexpected_error_is_retried_and_changes_nothing(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(bed, 2)
    watching = watcher(bed.settings())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(watching.swapper, "swap", broken)
    bed.publish(bed.published[3].meta)
    assert watching.poll() == "retry: internal"
    assert watching.metrics.failed.labels("internal")._value.get() == 1
    assert bed.answer()[0] == "2"
    monkeypatch.undo()
    assert watching.poll() == "swapped"  # retried at the next poll, not marked
    assert bed.answer()[0] == "3"


def test_the_repository_api_wants_the_admin_key(bed: Bed) -> None:
    _serve(bed, 2)
    watching = watcher(bed.settings(TRITON_ADMIN_KEY="wrong"))
    bed.publish(bed.published[3].meta)
    assert watching.poll() == "retry: server"
    assert bed.answer()[0] == "2"


def test_metadata_from_s3_is_polled_by_etag(bed: Bed, s3_client: Any) -> None:
    _serve(bed, 2)
    key = "control-plane/demo_mlp.json"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=bed.published[2].meta.to_json().encode())
    watching = watcher(bed.settings(WATCH_META_URI=f"s3://{BUCKET}/{key}"))
    assert isinstance(watching.source, S3Source)
    assert watching.poll() == "served"
    assert watching.poll() == "unchanged"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=bed.published[3].meta.to_json().encode())
    assert watching.poll() == "swapped"
    assert bed.answer()[0] == "3"


def test_another_model_is_not_an_update(bed: Bed, caplog: pytest.LogCaptureFixture) -> None:
    _serve(bed, 2)
    watching = watcher(bed.settings())
    renamed = dataclasses.replace(bed.published[3].meta, name="other_model")
    bed.publish(renamed)
    with caplog.at_level("ERROR"):
        assert watching.poll() == "other model"
    assert "a different model needs a restart" in caplog.text
    assert Repository(bed.repository).models() == ["demo_mlp"]
    assert bed.answer()[0] == "2"


def test_unusable_metadata_is_reported_once_and_changes_nothing(bed: Bed, caplog: pytest.LogCaptureFixture) -> None:
    _serve(bed, 2)
    watching = watcher(bed.settings())
    bed.meta_path.write_text('{"name": "demo_mlp", "version": ')  # a control plane that writes in place
    with caplog.at_level("WARNING"):
        assert watching.poll() == "unusable"
        assert watching.poll() == "unusable"
    assert sum("metadata not usable" in r.getMessage() for r in caplog.records) == 1
    assert bed.answer()[0] == "2"


# --- through the proxy ----------------------------------------------------------------------------------------
def _post(proxy: ProxyProcess, row: list[float]) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        proxy.url + "/predict", json.dumps({"input": row}).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["X-Model-Version"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, "", err.read()


@pytest.fixture
def proxy(bed: Bed, tmp_path: Path) -> Iterator[ProxyProcess]:
    process = ProxyProcess(tmp_path / "proxy.log", MODEL_SERVER_URL=bed.triton.grpc_url, MODEL_NAME="demo_mlp")
    yield process.start()
    process.stop()


def _models(proxy: ProxyProcess) -> dict[str, Any]:
    status, body = proxy.get("/v1/models")
    assert status == 200, body
    return json.loads(body)["models"][0]


def test_the_proxy_shows_the_version_being_tried(bed: Bed, proxy: ProxyProcess) -> None:
    _serve(bed, 2)
    assert _post(proxy, [1, 2, 3, 4, 5])[:2] == (200, "2")
    assert _models(proxy)["served_version"] == "2" and _models(proxy)["trying_version"] is None
    # The first half of a swap, by hand: version 3 installed and loaded as the candidate.
    settings = bed.settings()
    swapper = watcher(settings).swapper
    meta = bed.published[3].meta
    with swapper.repo.locked(meta.name):
        pipeline.install(meta, settings.sync)
    try:
        swapper.load_candidate(meta)
        shown = _models(proxy)
        assert (shown["served_version"], shown["trying_version"]) == ("2", "3")
    finally:
        swapper.unload_candidate(meta.name)
        swapper.repo.remove(meta.name, meta.version)
    assert wait_until(lambda: _models(proxy)["trying_version"] is None, 30)


def test_the_proxy_follows_a_new_version_with_a_new_interface(
    bed: Bed, proxy: ProxyProcess, s3_client: Any, tmp_path: Path
) -> None:
    _serve(bed, 2)
    assert _post(proxy, [1, 2, 3, 4, 5])[:2] == (200, "2")
    wider = publish(dataclasses.replace(DEMO_SPEC, version=21, width=6, seed=21), s3_client, tmp_path / "wider", BUCKET)
    watching = watcher(bed.settings())
    bed.publish(wider.meta)
    assert watching.poll() == "swapped"
    # Within the proxy's schema refresh, validation follows the new version: six inputs now, not five.
    assert wait_until(lambda: _post(proxy, [1, 2, 3, 4, 5, 6])[0] == 200, 30)
    status, version, _ = _post(proxy, [1, 2, 3, 4, 5, 6])
    assert (status, version) == (200, "21")
    assert _post(proxy, [1, 2, 3, 4, 5])[0] == 422
    assert json.loads(proxy.get("/v1/models")[1])["models"][0]["inputs"][0]["shape"] == [6]
    _serve(bed, 2)  # the width the other tests send
