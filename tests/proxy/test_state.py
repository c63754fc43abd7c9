"""A worker's shared state: MAX_IN_FLIGHT's places, shared by weight among the tenants holding any."""

from __future__ import annotations

import pytest

from proxy.errors import Overloaded, OverShare
from proxy.state import ProxyState
from proxy.tenants import Tenant
from tests.proxy.conftest import proxy_settings

FLOOD, LIGHT, HEAVY = Tenant("flood"), Tenant("light"), Tenant("heavy", weight=3)


def state_with(limit: int, holdings: list[tuple[Tenant, int]]) -> ProxyState:
    state = ProxyState(proxy_settings("grpc://127.0.0.1:1", MAX_IN_FLIGHT=str(limit)))
    for tenant, count in holdings:
        for _ in range(count):
            state.admit(tenant)
    return state


@pytest.mark.parametrize(
    ("holdings", "arrival", "refused"),
    [
        pytest.param([(FLOOD, 7)], FLOOD, None, id="below-the-limit"),
        pytest.param([(FLOOD, 8)], FLOOD, Overloaded, id="alone-at-the-limit-overloaded"),
        pytest.param([(FLOOD, 8)], LIGHT, None, id="another-tenant-below-its-share"),
        pytest.param([(FLOOD, 7), (LIGHT, 1)], FLOOD, OverShare, id="flood-over-its-half"),
        pytest.param([(FLOOD, 4), (LIGHT, 4)], LIGHT, OverShare, id="at-an-equal-share"),
        pytest.param([(HEAVY, 5), (LIGHT, 3)], HEAVY, None, id="weight-3-below-six-of-eight"),
        pytest.param([(HEAVY, 6), (LIGHT, 2)], HEAVY, OverShare, id="weight-3-at-six-of-eight"),
    ],
)
def test_places_are_shared_by_weight_at_the_limit(
    holdings: list[tuple[Tenant, int]], arrival: Tenant, refused: type[Exception] | None
) -> None:
    state = state_with(8, holdings)
    if refused is None:
        state.admit(arrival)
    else:
        with pytest.raises(refused) as caught:
            state.admit(arrival)
        assert type(caught.value) is refused  # OverShare is an Overloaded: the exact class matters here


def test_released_places_leave_no_trace() -> None:
    state = state_with(8, [(FLOOD, 2), (LIGHT, 1)])
    for tenant in (FLOOD, FLOOD, LIGHT):
        state.release(tenant)
    assert (state.admitted, state.admitted_by, state.weights) == (0, {}, {})


def test_a_reloaded_weight_does_not_count_a_tenant_twice() -> None:
    """The keys file reloaded while a team has requests in progress: one team, its new weight."""
    state = state_with(4, [(FLOOD, 2), (LIGHT, 2)])
    with pytest.raises(OverShare):
        state.admit(Tenant("flood", weight=1))
    state.admit(Tenant("flood", weight=3))  # now 3 of 4 places are its share
    assert state.admitted_by == {"flood": 3, "light": 2}
