"""The residency decider against a real Triton started with a budget, and the stubs' real memory reports: models
load on request, the least recently used idle one is unloaded to make room, and the memory is what the stubs say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexusml.command import demo
from nexusml.core.memory import read_reports
from nexusml.core.settings import load
from nexusml.testing.models import publish_into
from nexusml.updates.residency import NoRoom
from nexusml.updates.watch import CatalogWatcher, WatchSettings, watcher
from tests.nexusml.updates.conftest import served_catalog

pytestmark = pytest.mark.integration

BUCKET = "nexus-residency-test"
SPECS = (
    demo.DemoSpec(name="alpha", hidden=16, layers=1),
    demo.DemoSpec(name="beta", width=8, outputs=3, hidden=32, layers=2),
)


@pytest.fixture
def following(tmp_path: Path, s3_env: dict[str, str], s3_client: Any) -> Iterator[CatalogWatcher]:
    """Two models synced (one instance each), a Triton started within a budget (so with none loaded), and a watcher
    of their directory."""
    budget = {"INSTANCE_COUNT": "1", "MODEL_MEMORY_BUDGET": "64GiB"}
    with served_catalog(tmp_path, s3_env, s3_client, BUCKET, SPECS, **budget) as served:
        made = watcher(load(WatchSettings, served.env))
        assert isinstance(made, CatalogWatcher) and made.residency is not None
        yield made


def test_models_load_on_request_and_the_least_recently_used_makes_room(following: CatalogWatcher) -> None:
    residency = following.residency
    assert residency is not None
    admin = residency.swapper.admin
    assert admin.ready() == [], "with a budget Triton starts with no model loaded (none pinned)"

    first = residency.ensure("alpha")
    alpha = first["bytes"]
    assert first["loaded"] and admin.ready() == ["alpha"]
    assert alpha > 10 * 2**20, "measured by its stub: torch alone is far more than 10 MiB"
    assert not residency.ensure("alpha")["loaded"]

    residency.budget = alpha + alpha // 2  # room for one model of this size
    assert residency.ensure("beta")["loaded"]
    assert admin.ready() == ["beta"]
    assert "alpha" not in read_reports(residency.reports), "an unloaded model's stub removed its report"
    listing = residency.snapshot()["models"]
    assert listing["alpha"]["state"] == "not_resident" and listing["alpha"]["evictions"] == 1
    assert listing["beta"]["state"] == "resident" and listing["beta"]["bytes"] > 10 * 2**20

    with pytest.raises(NoRoom):
        residency.ensure("alpha", busy=["beta"])
    assert admin.ready() == ["beta"]


def test_a_new_model_is_tested_then_left_to_load_on_its_first_request(
    following: CatalogWatcher, s3_client: Any
) -> None:
    residency = following.residency
    assert residency is not None
    following.poll()
    publish_into(
        demo.DemoSpec(name="gamma", width=3, outputs=1, hidden=16, layers=1),
        s3_client,
        following.settings.sync.meta_path,
        BUCKET,
    )
    assert following.poll()["gamma"] == "swapped"
    assert "gamma" not in residency.swapper.admin.ready()
    gamma = residency.snapshot()["models"]["gamma"]
    assert gamma["state"] == "not_resident" and gamma["bytes"] > 10 * 2**20, "measured while it was tested"
    assert residency.ensure("gamma")["loaded"]
