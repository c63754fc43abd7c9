"""`metric_sums`: the one reading of Prometheus text that the harness's scrapes share."""

from __future__ import annotations

import pytest

from nexusml.testing.servers import metric_sums

SCRAPE = """# HELP nexus_proxy_in_flight predictions in progress
# TYPE nexus_proxy_in_flight gauge
nexus_proxy_in_flight 3.0
nexus_proxy_upstream_duration_seconds_sum{model="a"} 1.5
nexus_proxy_upstream_duration_seconds_sum{model="b",worker="0"} 0.25
nexus_proxy_upstream_duration_seconds_count{model="a"} 4.0
"""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("nexus_proxy_in_flight", 3.0, id="unlabelled"),
        pytest.param("nexus_proxy_upstream_duration_seconds_sum", 1.75, id="labels-summed"),
        pytest.param("nexus_proxy_upstream_duration_seconds", None, id="a-prefix-is-not-the-name"),
        pytest.param("nexus_proxy_requests_total", None, id="absent"),
    ],
)
def test_metric_sums(name: str, value: float | None) -> None:
    assert metric_sums(SCRAPE, (name,)) == {name: value}
