"""The limit counters, in process and in a real Redis: atomic check-and-charge across windows,
refunds on settlement, and replicas sharing one Redis that together never grant more than a
key's limit."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from service.errors import Overloaded, RateLimited
from service.keys import ApiKey
from service.limits import KeyLimiter, MemoryCounters, RedisCounters
from tests.fault_backend import closed_port_url
from tests.redis_server import redis_url  # noqa: F401  (fixture)

NOON = 1_800_000_000.0 - 1_800_000_000.0 % 86_400 + 43_200.0


@pytest.fixture(params=["memory", "redis"])
def make_counters(request, redis_url):  # noqa: F811
    made = []

    def make():
        counters = MemoryCounters() if request.param == "memory" else RedisCounters(redis_url)
        made.append(counters)
        return counters

    yield make


def key(**limits) -> ApiKey:
    return ApiKey(name="k" + uuid.uuid4().hex[:10], key_hash="x", **limits)


async def test_charge_is_all_or_nothing_across_windows(make_counters):
    counters = make_counters()
    a, b = f"a{uuid.uuid4().hex}", f"b{uuid.uuid4().hex}"
    assert await counters.charge([a, b], [100, 30], [60, 60], 25, 25) == (25, [0, 0])
    granted, used = await counters.charge([a, b], [100, 30], [60, 60], 25, 25)
    assert (granted, used) == (0, [25, 25])  # b has 5 left: nothing is charged anywhere
    assert await counters.charge([a, b], [100, 30], [60, 60], 25, 1) == (5, [25, 25])
    await counters.adjust([a, b], -10)
    assert await counters.charge([a, b], [100, 30], [60, 60], 10, 10) == (10, [20, 20])
    await counters.aclose()


async def test_reservations_are_settled_with_the_true_spend(make_counters):
    limiter = KeyLimiter(make_counters(), clock=lambda: NOON)
    budgeted = key(tokens_per_day=100)
    reservation, headers = await limiter.reserve_tokens(budgeted, 80, flexible_cap=50)
    assert headers["x-ratelimit-remaining-tokens"] == "20"
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve_tokens(budgeted, 30, flexible_cap=50)
    assert refused.value.code == "daily_budget_exhausted"
    assert refused.value.retry_after_s == 43_200
    reservation.settle_with(10)
    await limiter.settle(reservation)
    await limiter.settle(reservation)  # idempotent
    flexible, _ = await limiter.reserve_tokens(budgeted, None, flexible_cap=500)
    assert flexible.tokens == 90
    await limiter.aclose()


async def test_two_replicas_sharing_redis_never_grant_past_the_limit(redis_url):  # noqa: F811
    replicas = [KeyLimiter(RedisCounters(redis_url), clock=lambda: NOON) for _ in range(2)]
    budgeted = key(tokens_per_day=1000, tpm=800)
    rng = random.Random(7)

    async def one(i: int) -> int:
        limiter = replicas[i % 2]
        try:
            reservation, _ = await limiter.reserve_tokens(budgeted, rng.randint(1, 120), 64)
        except RateLimited:
            return 0
        spent = rng.randint(0, reservation.tokens)
        await asyncio.sleep(rng.random() / 100)
        reservation.settle_with(spent)
        await limiter.settle(reservation)
        return spent

    spent = await asyncio.gather(*(one(i) for i in range(200)))
    assert 0 < sum(spent) <= 800  # the tighter window, the minute's
    for limiter in replicas:
        await limiter.aclose()


async def test_unreachable_redis_refuses_with_503_rather_than_opening_up():
    limiter = KeyLimiter(RedisCounters(closed_port_url().replace("http", "redis")[:-3]))
    with pytest.raises(Overloaded) as refused:
        await limiter.admit_request(key(rpm=5))
    assert refused.value.status == 503
    await limiter.aclose()
