"""The limit counters, in process and in a real Redis: atomic check-and-charge across windows,
refunds on settlement, and replicas sharing one Redis that together never grant more than a
key's limit."""

from __future__ import annotations

import asyncio
import random
import time
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
        # These tests replay a timeline, so Redis dates charges by the tests' clock.
        counters = (MemoryCounters() if request.param == "memory"
                    else RedisCounters(redis_url, callers_clock=True))
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
    w = Window(f"day{uuid.uuid4().hex}", 10, 86_400, sliding=False)
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
    replicas = [KeyLimiter(RedisCounters(redis_url)) for _ in range(2)]
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
    minute = Window(f"look{uuid.uuid4().hex}", 100, 60)
    whole_day = Window(f"lookday{uuid.uuid4().hex}", 500, 86_400, sliding=False)
    assert (await counters.charge([minute, whole_day], 40, 40, "r1", NOON)).granted == 40
    for _ in range(2):  # a look changes nothing, so a second one reads the same
        look = await counters.charge([minute, whole_day], 0, 0, "", NOON + 15)
        assert (look.granted, look.used) == (0, [40, 40])
        assert look.wait_s == [pytest.approx(45.0), pytest.approx(43_200 - 15)]  # until empty
    assert (await counters.charge([minute], 60, 60, "r2", NOON + 16)).granted == 60
    await counters.aclose()


# Two replicas' local clocks disagree by a few seconds (NTP slews, a VM resumed from pause):
# the shared counters must window every charge by one clock, Redis's own, not the caller's.


async def test_a_replica_clock_ahead_does_not_forget_another_replicas_charges(
        redis_url):  # noqa: F811
    """A replica whose clock runs 1.5 s ahead prunes the other replica's charges 1.5 s early:
    scaled to a 2-second window, a key charged its whole limit on one replica got it again
    from the other 0.6 s later (200 units inside one window of 100)."""
    name = f"skew{uuid.uuid4().hex}"
    window = Window(name, 100, 2)
    right, ahead = RedisCounters(redis_url), RedisCounters(redis_url)
    assert (await right.charge([window], 100, 100, "a", time.time())).granted == 100
    await asyncio.sleep(0.6)
    again = await ahead.charge([window], 100, 1, "b", time.time() + 1.5)
    assert again.granted == 0 and again.used == [100]
    await right.aclose()
    await ahead.aclose()


async def test_replicas_two_seconds_apart_at_midnight_share_one_day(redis_url,  # noqa: F811
                                                                     monkeypatch):
    """One replica's clock reads 23:59:59 while the other's reads 00:00:01: each counted the
    key's day quota under its own day, so the key spent two days' tokens at once."""
    budgeted = key(tokens_per_day=100)
    midnight = (time.time() // 86_400 + 1) * 86_400
    before, after = KeyLimiter(RedisCounters(redis_url)), KeyLimiter(RedisCounters(redis_url))
    monkeypatch.setattr(before, "clock", lambda: midnight - 1)
    monkeypatch.setattr(after, "clock", lambda: midnight + 1)
    reservation, _ = await before.reserve_tokens(budgeted, 100, flexible_cap=100)
    assert reservation.tokens == 100
    with pytest.raises(RateLimited) as refused:
        await after.reserve_tokens(budgeted, 100, flexible_cap=100)
    assert refused.value.code == "daily_budget_exhausted"
    # Settling finds the day it was charged in, whatever the settling replica's clock says.
    reservation.settle_with(40)
    await after.settle(reservation)
    flexible, _ = await after.reserve_tokens(budgeted, None, flexible_cap=100)
    assert flexible.tokens == 60
    await before.aclose()
    await after.aclose()


async def test_a_minute_window_is_the_same_minute_on_skewed_replicas(redis_url,  # noqa: F811
                                                                     monkeypatch):
    """A replica 61 s ahead of another sees none of its charges in the last minute (the
    limiter's own windows, at their real length); one 3 s behind tells a refused key to come
    back 3 s later than the window frees."""
    budgeted = key(tpm=100)
    base = time.time()
    right, ahead, behind = (KeyLimiter(RedisCounters(redis_url)) for _ in range(3))
    monkeypatch.setattr(right, "clock", lambda: base)
    monkeypatch.setattr(ahead, "clock", lambda: base + 61)
    monkeypatch.setattr(behind, "clock", lambda: base - 3)
    await right.reserve_tokens(budgeted, 100, flexible_cap=100)
    with pytest.raises(RateLimited) as refused:
        await ahead.reserve_tokens(budgeted, 100, flexible_cap=100)
    assert refused.value.code == "rate_limit_tokens"
    with pytest.raises(RateLimited) as late:
        await behind.reserve_tokens(budgeted, 100, flexible_cap=100)
    assert late.value.retry_after_s <= 60
    for limiter in (right, ahead, behind):
        await limiter.aclose()
