"""The limit counters, in process and in a real Redis: atomic check-and-charge across windows,
refunds on settlement, and replicas sharing one Redis that together never grant more than a
key's limit."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from service.counters import Window
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
    a = Window(f"a{uuid.uuid4().hex}", 100, 60)
    b = Window(f"b{uuid.uuid4().hex}", 30, 60)
    charge = await counters.charge([a, b], 25, 25, "r1", NOON)
    assert (charge.granted, charge.used) == (25, [0, 0])
    charge = await counters.charge([a, b], 25, 25, "r2", NOON + 1)
    assert (charge.granted, charge.used) == (0, [25, 25])  # b has 5 left: nothing charged
    assert charge.wait_s[1] == pytest.approx(59.0)  # when r1 leaves b's window
    charge = await counters.charge([a, b], 25, 1, "r3", NOON + 2)
    assert (charge.granted, charge.used) == (5, [25, 25])
    await counters.adjust([a, b], "r1", -10)  # r1 spent 15 of its 25
    charge = await counters.charge([a, b], 10, 10, "r4", NOON + 3)
    assert (charge.granted, charge.used) == (10, [20, 20])
    await counters.aclose()


async def test_a_sliding_window_holds_at_the_minute_edge(make_counters):
    """A fixed minute lets a key spend its limit at 12:00:59 and again at 12:01:00; the
    sliding window refuses the second until the first is a minute old."""
    counters = make_counters()
    w = Window(f"edge{uuid.uuid4().hex}", 100, 60)
    minute_end = NOON + 60 - 1
    assert (await counters.charge([w], 100, 100, "late", minute_end)).granted == 100
    early = await counters.charge([w], 100, 1, "next", minute_end + 1)
    assert early.granted == 0 and early.wait_s[0] == pytest.approx(59.0)
    assert (await counters.charge([w], 100, 1, "after", minute_end + 60.5)).granted == 100
    await counters.aclose()


async def test_a_fixed_day_window_resets_at_midnight(make_counters):
    counters = make_counters()
    day = int(NOON // 86_400)
    w = Window(f"day{uuid.uuid4().hex}:{day}", 10, 86_400, sliding=False,
               end_s=(day + 1) * 86_400)
    assert (await counters.charge([w], 10, 10, "a", NOON)).granted == 10
    refused = await counters.charge([w], 1, 1, "b", NOON)
    assert refused.granted == 0 and refused.wait_s[0] == pytest.approx(43_200)
    await counters.aclose()


async def test_any_minute_of_random_traffic_stays_under_the_limit(make_counters):
    """Random requests over three minutes, each settled with a random true spend: in every
    60-second span the tokens charged never pass the limit."""
    counters = make_counters()
    limiter = KeyLimiter(counters)
    budgeted = key(tpm=500)
    rng = random.Random(3)
    t = NOON
    spends: list[tuple[float, int]] = []
    for _ in range(400):
        t += rng.random() * 0.9
        limiter.clock = lambda t=t: t
        try:
            reservation, _ = await limiter.reserve_tokens(budgeted, rng.randint(10, 120), 64)
        except RateLimited:
            continue
        spent = rng.randint(0, reservation.tokens)
        reservation.settle_with(spent)
        await limiter.settle(reservation)
        spends.append((t, spent))
    assert len(spends) > 20
    for start, _ in spends:
        assert sum(s for at, s in spends if start <= at < start + 60) <= 500
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


async def test_a_charge_of_nothing_reads_the_windows_without_charging(make_counters):
    # The x-ratelimit-*-tokens headers of a refusal that is not about tokens (a key's
    # requests per minute) read the token windows this way.
    counters = make_counters()
    day = int(NOON // 86_400)
    minute = Window(f"look{uuid.uuid4().hex}", 100, 60)
    whole_day = Window(f"lookday{uuid.uuid4().hex}:{day}", 500, 86_400, sliding=False,
                       end_s=(day + 1) * 86_400)
    assert (await counters.charge([minute, whole_day], 40, 40, "r1", NOON)).granted == 40
    for _ in range(2):  # a look changes nothing, so a second one reads the same
        look = await counters.charge([minute, whole_day], 0, 0, "", NOON + 15)
        assert (look.granted, look.used) == (0, [40, 40])
        assert look.wait_s == [pytest.approx(45.0), pytest.approx(43_200 - 15)]  # until empty
    assert (await counters.charge([minute], 60, 60, "r2", NOON + 16)).granted == 60
    await counters.aclose()
