"""The many-models traffic: arrival schedules, load windows, and the proxy's load wait read per request (against a
small aiohttp server that answers like the proxy, no Triton)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from reliability import traffic
from reliability.load import Workload

COLD_DELAY_S = 0.05


async def predict(request: web.Request) -> web.Response:
    """Echo the row's sum; the model `cold` first waits as for a load and says how long it waited: the row's first
    value, so that each answer names its own request."""
    row = orjson.loads(await request.read())["input"]
    headers = {}
    if request.match_info["name"] == "cold":
        await asyncio.sleep(COLD_DELAY_S)
        headers[traffic.LOAD_WAIT_HEADER] = str(int(row[0]))
    return web.json_response({"output": [sum(row)]}, headers=headers)


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/models/{name}/predict", predict)
    async with TestServer(app) as server:
        yield str(server.make_url("")).rstrip("/")


def workload(url: str, name: str, rows: list[list[float]]) -> Workload:
    return Workload(url, rows, [[sum(row)] for row in rows], path=f"/models/{name}/predict", timeout_s=5)


@pytest.mark.asyncio
async def test_each_answer_carries_its_own_load_wait(proxy: str) -> None:
    works = {
        "hot": workload(proxy, "hot", [[1.0, 2.0], [3.0, 4.0]]),
        "cold": workload(proxy, "cold", [[float(wait), 0.0] for wait in (100, 200, 300, 400)]),
    }
    arrivals = [
        *traffic.steady_arrivals({"hot": 200.0}, 0.2),
        *[traffic.Arrival(0.01 * i, "cold") for i in range(4)],  # all four waiting at once
    ]
    answers = await traffic.scheduled(works, arrivals, max_outstanding=64)
    assert len(answers) == len(arrivals)
    assert all(a.sample.status == 200 and a.sample.correct for a in answers)
    assert all(a.load_wait_ms is None for a in answers if a.model == "hot")
    assert sorted(a.load_wait_ms for a in answers if a.model == "cold") == [100, 200, 300, 400]


@pytest.mark.parametrize(
    ("weights", "count", "expected"),
    [
        pytest.param({"a": 1.0, "b": 1.0}, 4, ["a", "b", "a", "b"], id="equal-weights-alternate"),
        pytest.param({"a": 3.0, "b": 1.0}, 4, ["a", "a", "b", "a"], id="spread-not-bunched"),
        pytest.param({"a": 1.0}, 0, [], id="none"),
    ],
)
def test_smooth_round_robin(weights: dict[str, float], count: int, expected: list[str]) -> None:
    assert traffic.smooth_round_robin(weights, count) == expected


def test_visiting_order_visits_every_model_once_first() -> None:
    order = traffic.visiting_order({"a": 4.0, "b": 2.0, "c": 1.0}, 10)
    assert order[:3] == ["a", "b", "c"]
    assert Counter(order[3:]) == {"a": 4, "b": 2, "c": 1}


@pytest.mark.asyncio
async def test_one_at_a_time_waits_for_each_answer(proxy: str) -> None:
    works = {"cold": workload(proxy, "cold", [[100.0, 0.0]]), "hot": workload(proxy, "hot", [[1.0, 2.0]])}
    answers = await traffic.one_at_a_time(works, ["cold", "hot", "cold"] * 10, pause_s=0.01, duration_s=0.5)
    assert 3 <= len(answers) < 30
    assert [a.model for a in answers[:3]] == ["cold", "hot", "cold"]
    for first, second in itertools.pairwise(answers):  # never two at once
        assert second.sample.started >= first.sample.started + first.sample.latency_s
    assert {a.load_wait_ms for a in answers if a.model == "cold"} == {100}


@pytest.mark.asyncio
async def test_one_at_a_time_sends_at_least_so_many_past_its_time(proxy: str) -> None:
    works = {"hot": workload(proxy, "hot", [[1.0, 2.0]])}
    answers = await traffic.one_at_a_time(works, ["hot"] * 10, pause_s=0.01, duration_s=0.0, at_least=4)
    assert len(answers) == 4


def test_steady_arrivals_space_each_model_at_its_rate() -> None:
    arrivals = traffic.steady_arrivals({"a": 10.0, "b": 2.0}, 1.0)
    assert [a.at for a in arrivals if a.model == "a"] == pytest.approx([i / 10 for i in range(10)])
    assert [a.at for a in arrivals if a.model == "b"] == pytest.approx([0.0, 0.5])


def test_merge_joins_overlapping_spans() -> None:
    assert traffic.merge([(20.0, 20.5), (10.5, 11.5), (10.0, 11.0), (11.5, 12.0)]) == [(10.0, 12.0), (20.0, 20.5)]


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        pytest.param(9.9, False, id="before"),
        pytest.param(10.0, True, id="at-the-start"),
        pytest.param(11.4, True, id="inside"),
        pytest.param(11.5, False, id="at-the-end"),
        pytest.param(15.0, False, id="between"),
        pytest.param(20.2, True, id="second-window"),
    ],
)
def test_within(at: float, inside: bool) -> None:
    assert traffic.within(at, [(10.0, 11.5), (20.0, 20.5)]) is inside
