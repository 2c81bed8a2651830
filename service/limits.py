"""Per-key limits: requests per minute, completion tokens per minute and per UTC day.

Each limit is a counter in a fixed window (a minute, or a UTC day) keyed by the key's name
and the window's number. A request takes one unit of the request window when it arrives;
a completion request then *reserves* its tokens (its budget) from the token windows before
any upstream call, and is *settled* with the tokens it really spent when it ends, so requests
running together can never be granted more than a key has left. A reservation checks and
charges every window in one atomic step, so two limits cannot be half-charged.

The counters live in process (``MemoryCounters``: one replica) or in Redis
(``RedisCounters``: shared by every replica; redis-py, with the check-and-charge as one Lua
script that Redis runs atomically). The ``limits`` library was the first choice, but it has no
way to give back the unspent part of a reservation, which is what lets a key be charged its
true spend rather than its budgets.

Tokens here are upstream *completion* tokens, the unit of ``budget_tokens`` that the gateway
can cap; prompt tokens are counted in ``ttc_key_tokens_total`` but not limited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.errors import Overloaded, RateLimited
from service.keys import ApiKey

log = logging.getLogger(__name__)

MINUTE_S = 60
DAY_S = 86_400
# Give Redis calls this long (seconds) before the request is refused as overloaded.
REDIS_TIMEOUT_S = 2.0


class Counters(Protocol):
    """Window counters: atomic check-and-charge, and adjustment after the fact."""

    async def charge(self, keys: Sequence[str], limits: Sequence[int], ttls: Sequence[int],
                     amount: int, minimum: int) -> tuple[int, list[int]]:
        """Charge ``g = min(amount, room in every window)`` to every counter if ``g >=
        minimum``; returns (g or 0 when refused, each counter's value before the charge)."""
        ...

    async def adjust(self, keys: Sequence[str], delta: int) -> None:
        """Add ``delta`` (may be negative) to each counter that still exists."""
        ...

    async def aclose(self) -> None: ...


class MemoryCounters:
    """Counters in this process (one replica). Safe on one event loop: nothing awaits between
    the check and the charge."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._values: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self._clock = clock
        self._next_purge = 0.0

    async def charge(self, keys: Sequence[str], limits: Sequence[int], ttls: Sequence[int],
                     amount: int, minimum: int) -> tuple[int, list[int]]:
        now = self._clock()
        self._purge(now)
        used = [self._get(key, now) for key in keys]
        grant = min([amount, *(limit - u for limit, u in zip(limits, used, strict=True))])
        if grant < minimum:
            return 0, used
        for key, ttl, u in zip(keys, ttls, used, strict=True):
            expires = self._values[key][1] if key in self._values else now + ttl
            self._values[key] = (u + grant, expires)
        return grant, used

    async def adjust(self, keys: Sequence[str], delta: int) -> None:
        now = self._clock()
        for key in keys:
            self._get(key, now)  # drops the counter when its window is over
            entry = self._values.get(key)
            if entry is not None:
                self._values[key] = (entry[0] + delta, entry[1])

    async def aclose(self) -> None:
        self._values.clear()

    def _get(self, key: str, now: float) -> int:
        entry = self._values.get(key)
        if entry is None:
            return 0
        if entry[1] <= now:
            del self._values[key]
            return 0
        return entry[0]

    def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + MINUTE_S
        for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
            del self._values[key]


# KEYS: the window counters. ARGV: amount, minimum, then a limit and a TTL (s) per counter.
# Returns {granted or 0, value of each counter before}.
_CHARGE_LUA = """
local amount = tonumber(ARGV[1])
local minimum = tonumber(ARGV[2])
local grant = amount
local used = {}
for i, key in ipairs(KEYS) do
  used[i] = tonumber(redis.call('GET', key) or '0')
  local room = tonumber(ARGV[1 + 2 * i]) - used[i]
  if room < grant then grant = room end
end
if grant < minimum then
  return {0, unpack(used)}
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, grant)
  if redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, tonumber(ARGV[2 + 2 * i]))
  end
end
return {grant, unpack(used)}
"""
# KEYS: counters; ARGV: delta. Adds delta to the counters still alive (an expired window
# needs no refund).
_ADJUST_LUA = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('INCRBY', key, ARGV[1])
  end
end
return 0
"""


class RedisCounters:
    """Counters in Redis, shared by every replica pointing at the same ``redis_url``.

    Raises ``Overloaded`` (503) from ``charge`` when Redis does not answer within
    ``REDIS_TIMEOUT_S``: without its counters the gateway cannot tell what a key has left.
    """

    def __init__(self, url: str):
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                     socket_connect_timeout=REDIS_TIMEOUT_S)
        self._charge = self._redis.register_script(_CHARGE_LUA)
        self._adjust = self._redis.register_script(_ADJUST_LUA)

    async def charge(self, keys: Sequence[str], limits: Sequence[int], ttls: Sequence[int],
                     amount: int, minimum: int) -> tuple[int, list[int]]:
        from redis.exceptions import RedisError

        argv: list[int] = [amount, minimum]
        for limit, ttl in zip(limits, ttls, strict=True):
            argv += [limit, ttl]
        try:
            reply = await asyncio.wait_for(self._charge(keys=list(keys), args=argv),
                                           REDIS_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            # The URL may carry a password: name the failure, not the connection.
            log.warning("the rate-limit counters (Redis) failed: %s", type(exc).__name__)
            raise Overloaded("the gateway cannot check this key's limits right now",
                             code="limits_unavailable") from exc
        return int(reply[0]), [int(v) for v in reply[1:]]

    async def adjust(self, keys: Sequence[str], delta: int) -> None:
        await asyncio.wait_for(self._adjust(keys=list(keys), args=[delta]), REDIS_TIMEOUT_S)

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass
class Reservation:
    """Completion tokens reserved for one request of one key, until it is settled.

    ``tokens``: reserved (0 when the key has no token limit); ``spent``: the true spend, set
    by ``settle_with`` when the request's outcome is recorded (None until then: a request that
    never reached its record is charged its whole reservation).
    """

    key_name: str
    tokens: int = 0
    counters: tuple[str, ...] = ()
    spent: int | None = None
    settled: bool = field(default=False, repr=False)

    def settle_with(self, spent_tokens: int) -> None:
        """Note what the request really spent (completion tokens); the ``KeyLimiter`` applies
        it to the counters once the response is sent."""
        self.spent = spent_tokens


class KeyLimiter:
    """Applies each key's limits to its counters.

    Args:
        counters: ``MemoryCounters`` or ``RedisCounters``.
        clock: Unix time in seconds (tests move it).
        prefix: the counters' name prefix.
    """

    def __init__(self, counters: Counters, clock: Callable[[], float] = time.time,
                 prefix: str = "ttc:limit:"):
        self.counters = counters
        self.clock = clock
        self._prefix = prefix

    async def admit_request(self, key: ApiKey) -> dict[str, str]:
        """Count one request against ``key.rpm``; returns the ``x-ratelimit-*-requests``
        headers.

        Raises:
            RateLimited: the key made ``rpm`` requests this minute (429, ``Retry-After``).
            Overloaded: the shared counters do not answer (503).
        """
        if key.rpm is None:
            return {}
        counter, ttl, reset_s = self._window(key, "rpm", MINUTE_S)
        granted, used = await self.counters.charge([counter], [key.rpm], [ttl], 1, 1)
        remaining = max(0, key.rpm - used[0] - granted)
        headers = {"x-ratelimit-limit-requests": str(key.rpm),
                   "x-ratelimit-remaining-requests": str(remaining),
                   "x-ratelimit-reset-requests": f"{math.ceil(reset_s)}s"}
        if not granted:
            raise RateLimited(f"this key may make {key.rpm} requests per minute; retry in "
                              f"{math.ceil(reset_s)}s", retry_after_s=reset_s,
                              code="rate_limit_requests", rate_headers=headers)
        return headers

    async def reserve_tokens(self, key: ApiKey, tokens: int | None,
                             flexible_cap: int) -> tuple[Reservation, dict[str, str]]:
        """Reserve ``tokens`` completion tokens for one request, or, when ``tokens`` is None
        (the request set no cap), as many as the key has left up to ``flexible_cap``.

        Returns the reservation and the ``x-ratelimit-*-tokens`` headers.

        Raises:
            TokensOverLimit: ``tokens`` is more than a window's whole limit (no wait helps).
            RateLimited: the minute's or the day's tokens are used up (429, ``Retry-After``).
            Overloaded: the shared counters do not answer (503).
        """
        if not key.limits_tokens:
            return Reservation(key.name), {}
        windows = [self._window(key, kind, length)
                   for kind, limit, length in self._token_limits(key)]
        limits = [limit for _, limit, _ in self._token_limits(key)]
        if tokens is not None and tokens > min(limits):
            raise TokensOverLimit(tokens, min(limits))
        amount = flexible_cap if tokens is None else tokens
        counters = [w[0] for w in windows]
        granted, used = await self.counters.charge(
            counters, limits, [w[1] for w in windows], amount, 1 if tokens is None else amount)
        rooms = [limit - u - granted for limit, u in zip(limits, used, strict=True)]
        tightest = min(range(len(rooms)), key=lambda i: rooms[i])
        headers = {"x-ratelimit-limit-tokens": str(limits[tightest]),
                   "x-ratelimit-remaining-tokens": str(max(0, rooms[tightest])),
                   "x-ratelimit-reset-tokens": f"{math.ceil(windows[tightest][2])}s"}
        if not granted:
            # The window that refused: the one with the least room for this request.
            refusing = min(range(len(limits)), key=lambda i: limits[i] - used[i])
            kind = self._token_limits(key)[refusing][0]
            reset_s = windows[refusing][2]
            what = "per minute" if kind == "tpm" else "per day (UTC)"
            raise RateLimited(
                f"this key may spend {limits[refusing]} completion tokens {what}; "
                f"{max(0, limits[refusing] - used[refusing])} are left and this request "
                f"needs {amount}; retry in {math.ceil(reset_s)}s",
                retry_after_s=reset_s,
                code="rate_limit_tokens" if kind == "tpm" else "daily_budget_exhausted",
                rate_headers=headers)
        return Reservation(key.name, granted, tuple(counters)), headers

    async def settle(self, reservation: Reservation) -> None:
        """Give back what a finished request did not spend (or charge an overrun). Idempotent;
        a failure is logged, never raised (the response is already sent)."""
        if reservation.settled or not reservation.counters:
            reservation.settled = True
            return
        reservation.settled = True
        spent = reservation.tokens if reservation.spent is None else reservation.spent
        delta = spent - reservation.tokens
        if delta == 0:
            return
        try:
            await self.counters.adjust(reservation.counters, delta)
        except Exception as exc:  # Redis down: the reservation stays charged in full
            log.warning("could not settle a token reservation of key %s: %s",
                        reservation.key_name, type(exc).__name__)

    async def aclose(self) -> None:
        await self.counters.aclose()

    @staticmethod
    def _token_limits(key: ApiKey) -> list[tuple[str, int, int]]:
        out = []
        if key.tpm is not None:
            out.append(("tpm", key.tpm, MINUTE_S))
        if key.tokens_per_day is not None:
            out.append(("tpd", key.tokens_per_day, DAY_S))
        return out

    def _window(self, key: ApiKey, kind: str, length_s: int) -> tuple[str, int, float]:
        """(counter name, its TTL in seconds, seconds until the window resets). Windows start
        at multiples of their length since the epoch: minutes, and days at 00:00 UTC."""
        now = self.clock()
        number = int(now // length_s)
        reset_s = (number + 1) * length_s - now
        return f"{self._prefix}{key.name}:{kind}:{number}", length_s + MINUTE_S, reset_s


class TokensOverLimit(Exception):
    """A request asks for more tokens than a key may spend in a whole window."""

    def __init__(self, tokens: int, limit: int):
        super().__init__(f"this request may spend {tokens} completion tokens, more than this "
                         f"key may spend in a whole window ({limit}); lower max_tokens or "
                         "router.budget_tokens")
        self.tokens = tokens
        self.limit = limit
