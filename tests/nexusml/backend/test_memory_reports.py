"""The stubs' memory reports from a real Triton: there from the moment a model is loaded, gone once it is unloaded.

With MODEL_MEMORY_BUDGET, `nexus triton` loads no model at start (none pinned) and does not take the models left
unloaded for failures; the load and the unload go through the gRPC repository API, as the watcher's do. The
launcher removes the reports a killed stub left behind, at start and at stop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from nexusml.core.memory import read_reports, report_dir
from nexusml.testing.models import PublishedModel, sync_into
from nexusml.testing.polling import wait_until
from nexusml.testing.servers import start_triton

pytestmark = pytest.mark.integration

INSTANCES = 2


@pytest.fixture
def repository(demo_model: PublishedModel, s3_env: dict[str, str], tmp_path: Path) -> Path:
    """The demo model synced with `INSTANCES` instances."""
    return sync_into(demo_model.meta, s3_env, tmp_path / "model_repository", INSTANCE_COUNT=str(INSTANCES))


def test_each_instance_reports_its_memory_while_loaded(
    demo_model: PublishedModel, repository: Path, tmp_path: Path
) -> None:
    name = demo_model.meta.name
    directory = report_dir(repository)
    directory.mkdir(parents=True, exist_ok=True)  # as the watcher makes it within a budget
    stale = {"model": name, "version": "1", "instance": f"{name}_0_9", "pid": 1, "host_bytes": 1, "written": 0}
    (directory / f"{name}@{name}_0_9.json").write_text(json.dumps(stale))
    server = start_triton(repository, tmp_path, MODEL_MEMORY_BUDGET="1GiB")
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url.split("://")[1])
        assert not client.is_model_ready(name)
        assert server.unavailable() == {}  # left unloaded on purpose: no failure to report
        assert read_reports(directory) == {}

        client.load_model(name)
        reports = read_reports(directory)[name]  # written before the stubs' initialize returned
        assert sorted(r.instance for r in reports) == [f"{name}_0_{i}" for i in range(INSTANCES)]
        assert len({r.pid for r in reports}) == INSTANCES
        assert {r.version for r in reports} == {str(demo_model.meta.version)}
        for report in reports:
            assert report.host_bytes > 10 * 2**20, report  # torch alone is more than that
            assert report.device_bytes == 0
        assert sorted(p.name for p in directory.iterdir()) == [f"{name}@{r.instance}.json" for r in reports]

        client.unload_model(name)
        # Triton answers the unload before its stubs have finalized.
        assert wait_until(lambda: not read_reports(directory), 60), read_reports(directory)
        assert list(directory.iterdir()) == []
        client.load_model(name)
    finally:
        server.stop()
    assert list(directory.iterdir()) == []  # the server's stubs are gone, and so are their reports
    directory.rmdir()
