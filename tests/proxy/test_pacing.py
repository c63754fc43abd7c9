"""The pacer: MAX_ACTIVE's places shared by weight, waits in a fair order, and no place lost on any path."""

from __future__ import annotations

import asyncio

import pytest

from proxy import pacing
from proxy.errors import DeadlineExceeded
from proxy.pacing import Pacer
from proxy.tenants import Tenant

A, B, C = Tenant("team-a"), Tenant("team-b"), Tenant("team-c")
HEAVY = Tenant("heavy", weight=3.0)
HIGH = Tenant("urgent", priority="high")


def later(seconds: float = 60.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def fill(pacer: Pacer, tenant: Tenant, count: int) -> None:
    for _ in range(count):
        assert await pacer.acquire(tenant, later()) == 0.0


def park(pacer: Pacer, tenant: Tenant, count: int) -> list[asyncio.Task[float]]:
    return [asyncio.ensure_future(pacer.acquire(tenant, later())) for _ in range(count)]


async def waiting(pacer: Pacer, tenant: Tenant) -> asyncio.Task[float]:
    """One more request of `tenant`, checked to be waiting for a place once the loop has run."""
    [task] = park(pacer, tenant, 1)
    await settle()
    assert not task.done()
    return task


async def present(pacer: Pacer, tenant: Tenant) -> None:
    """`tenant` asked for a place just now (and is done): within PRESENCE_S it counts as present."""
    await fill(pacer, tenant, 1)
    pacer.release(tenant)


@pytest.mark.asyncio
async def test_a_tenant_alone_is_not_limited() -> None:
    pacer = Pacer(limit=4)
    await fill(pacer, A, 10)
    assert pacer.active == 10


@pytest.mark.asyncio
async def test_beside_a_tenant_seen_lately_a_tenant_waits_beyond_the_limit() -> None:
    pacer = Pacer(limit=4)
    await present(pacer, B)
    await fill(pacer, A, 4)
    parked = await waiting(pacer, A)
    assert pacer.active == 4
    pacer.release(A)
    assert await parked >= 0.0 and pacer.active == 4


@pytest.mark.asyncio
async def test_a_tenant_not_seen_for_presence_s_no_longer_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "PRESENCE_S", 0.01)
    pacer = Pacer(limit=4)
    await present(pacer, B)
    await asyncio.sleep(0.02)
    await fill(pacer, A, 10)
    assert pacer.active == 10 and B.name not in pacer.seen


@pytest.mark.asyncio
async def test_a_tenant_below_its_share_starts_at_once_beside_a_full_flood() -> None:
    pacer = Pacer(limit=4)
    await fill(pacer, A, 4)
    assert await pacer.acquire(B, later()) == 0.0  # its share is 2 of 4, it holds none
    assert await pacer.acquire(B, later()) == 0.0
    third = await waiting(pacer, B)
    assert pacer.active == 6
    third.cancel()


@pytest.mark.parametrize(
    ("holding", "order", "released", "expected"),
    [
        pytest.param({A: 2, B: 2}, (B, A), A, A, id="owed-most-before-first-come"),
        pytest.param({HEAVY: 3, B: 1}, (B, HEAVY), HEAVY, HEAVY, id="by-weight"),
        pytest.param({B: 2, HIGH: 2, C: 2}, (B, HIGH), C, HIGH, id="a-higher-class-first"),
    ],
)
@pytest.mark.asyncio
async def test_a_freed_place_goes_to_the_waiting_tenant_owed_most(
    holding: dict[Tenant, int], order: tuple[Tenant, ...], released: Tenant, expected: Tenant
) -> None:
    pacer = Pacer(limit=sum(holding.values()))  # full
    for tenant, count in holding.items():
        await fill(pacer, tenant, count)
    waiters = {tenant.name: await waiting(pacer, tenant) for tenant in order}  # in this order
    pacer.release(released)
    await settle()
    assert [name for name, task in waiters.items() if task.done()] == [expected.name]
    for task in waiters.values():
        task.cancel()


@pytest.mark.asyncio
async def test_shares_follow_weights_while_both_wait() -> None:
    pacer = Pacer(limit=8)
    await present(pacer, HEAVY)
    await present(pacer, B)
    parked = {HEAVY.name: park(pacer, HEAVY, 100), B.name: park(pacer, B, 100)}
    await settle()
    for _ in range(30):  # places cycle: each finished prediction frees one
        name = max(pacer.tenants, key=lambda n: pacer.tenants[n].held / pacer.tenants[n].weight)
        pacer.release(HEAVY if name == HEAVY.name else B)
        await settle()
    assert (pacer.tenants[HEAVY.name].held, pacer.tenants[B.name].held) == (6, 2)
    for tasks in parked.values():
        for task in tasks:
            task.cancel()


@pytest.mark.asyncio
async def test_a_wait_ends_at_the_deadline_with_504_and_holds_nothing() -> None:
    pacer = Pacer(limit=1)
    await present(pacer, C)
    await fill(pacer, A, 1)
    with pytest.raises(DeadlineExceeded, match="waited for its tenant's turn"):
        await pacer.acquire(A, later(0.01))
    assert pacer.active == 1 and not pacer.tenants[A.name].queue
    pacer.release(A)
    assert pacer.active == 0 and not pacer.tenants  # nothing held


@pytest.mark.parametrize(
    "cancelled_first",
    [
        # A client that goes away cancels its task, which cancels the future it waits on at once: the place freed
        # before its handler ran must go to the next waiter, not to the cancelled one (that leaked a place, and a
        # full pacer then answered nobody).
        pytest.param(True, id="cancelled-before-its-turn-is-skipped"),
        pytest.param(False, id="given-a-place-as-it-is-cancelled-passes-it-on"),
    ],
)
@pytest.mark.asyncio
async def test_a_cancelled_waiter_loses_no_place(cancelled_first: bool) -> None:
    pacer = Pacer(limit=1)
    await present(pacer, C)
    await fill(pacer, A, 1)
    gone, next_one = park(pacer, A, 2)
    await settle()
    if cancelled_first:
        gone.cancel()
    pacer.release(A)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await next_one >= 0.0
    assert pacer.active == 1 and pacer.tenants[A.name].held == 1
    pacer.release(A)
    assert pacer.active == 0 and not pacer.tenants  # nothing held


@pytest.mark.asyncio
async def test_a_tenant_holding_a_place_counts_as_present_however_long_ago_it_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pacing, "PRESENCE_S", 0.01)
    pacer = Pacer(limit=2)
    await fill(pacer, B, 1)  # slow: still in progress after PRESENCE_S
    await asyncio.sleep(0.02)
    await fill(pacer, A, 1)
    (await waiting(pacer, A)).cancel()


@pytest.mark.asyncio
async def test_waiters_held_back_by_a_tenant_gone_quiet_start_without_a_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pacing, "PRESENCE_S", 0.05)
    pacer = Pacer(limit=2)
    await present(pacer, B)
    await fill(pacer, A, 2)
    parked = await waiting(pacer, A)
    assert await asyncio.wait_for(parked, 5) >= 0.04  # B's presence ended; nothing was released
    assert pacer.active == 3
