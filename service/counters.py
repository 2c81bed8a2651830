"""Limit counters: atomic check-and-charge over several windows, and settlement after the fact.

A window is either *sliding* (at most ``limit`` units in any span of ``length_s`` seconds) or
*fixed* (at most ``limit`` units between two resets, for the UTC day's quota). Fixed minute
windows, as this module used before, let twice the limit through across a boundary (a key
spends its whole minute at 12:00:59 and again at 12:01:00); a sliding window does not.

Sliding windows are *sliding-window logs*: one entry per charge (its time and amount) and a
running total; a charge first drops the entries older than ``length_s``, then grants
``min(amount, room in every window)`` if that is at least ``minimum``, all in one atomic step,
so two limits are never half-charged. A log keeps one entry per request, so it is exact, and
settling a reservation changes its own entry: a refund frees room at once and an overrun is
charged to the same moment. (The ``limits`` library's moving window has no way to give back
part of a hit, and its sliding-window counter approximates the previous window as uniform; the
log needs neither compromise.)

``MemoryCounters`` keeps them in this process (one replica); ``RedisCounters`` in Redis, shared
by every replica (redis-py; each step is a Lua script, which Redis runs atomically: a sorted
set of entries by time, a hash of their amounts and a total per window).

Shared counters keep time by *their own* clock: each script reads Redis's ``TIME``, which
dates entries, prunes them and picks a fixed window's period. Replicas' clocks may disagree
by seconds (NTP slewing after a boot, a VM resumed from pause), and a charge dated by its
replica's clock was pruned by a replica running ahead that much early (a key spent twice its
limit in less than a minute) and counted in another UTC day by replicas on either side of
midnight. ``MemoryCounters`` serves one replica, so the caller's clock is the only one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.errors import Overloaded

log = logging.getLogger(__name__)

# Give Redis calls this long (seconds) before the request is refused as overloaded.
REDIS_TIMEOUT_S = 2.0
# Counters outlive their window by this much (seconds), so a late settlement still finds them.
GRACE_S = 60


@dataclass(frozen=True)
class Window:
    """One limit's counter: at most ``limit`` units per ``length_s`` seconds.

    ``sliding`` windows count any span of ``length_s`` seconds. Fixed ones count periods of
    ``length_s`` seconds from the Unix epoch (a day's from 00:00 UTC): the counter of period
    ``p`` is ``NAME:p`` and resets at ``(p + 1) * length_s``. ``period`` None means the one
    the counters' clock is in when charged (``at`` pins it, so a settlement later finds the
    period it was charged in).
    """

    name: str
    limit: int
    length_s: int
    sliding: bool = True
    period: int | None = None

    def at(self, now: float) -> Window:
        """This window as charged at ``now`` (Unix s): a fixed one with its period pinned."""
        if self.sliding or self.period is not None:
            return self
        return dataclasses.replace(self, period=int(now // self.length_s))

    def counter(self, now: float) -> str:
        """The counter's name at ``now`` (Unix s): ``name``, or ``NAME:period`` if fixed."""
        return self.name if self.sliding else f"{self.name}:{self.at(now).period}"

    def end_s(self, now: float) -> float:
        """When a fixed window's period at ``now`` ends (Unix s)."""
        return float((self.at(now).period or 0) + 1) * self.length_s


@dataclass(frozen=True)
class Charge:
    """The result of ``Counters.charge``: units ``granted`` (0 when refused), each window's use
    before the charge, and each window's ``wait_s``: when refused, seconds until it has room
    for ``minimum`` (``Retry-After``); when granted, or for a charge of 0 units (a look that
    charges nothing), until it is back to empty (OpenAI's ``x-ratelimit-reset-*``). A fixed
    window's is always the time to its reset."""

    granted: int
    used: list[int]
    wait_s: list[float]
    now_s: float = 0.0  # the counters' clock at the charge (Unix s)


class Counters(Protocol):
    """Window counters shared by the replicas that use them."""

    async def charge(self, windows: Sequence[Window], amount: int, minimum: int, entry: str,
                     now: float) -> Charge:
        """At ``now`` (the caller's Unix clock, s; counters shared by replicas use their own
        clock instead), grant ``g = min(amount, room in every window)`` as the entry ``entry``
        of every window if ``g >= minimum``, else nothing. ``amount`` 0 charges nothing and
        reads each window's use and time until empty (``KeyLimiter`` builds headers from it).

        Raises:
            Overloaded: the counters cannot be reached (503).
        """
        ...

    async def adjust(self, windows: Sequence[Window], entry: str, delta: int) -> None:
        """Add ``delta`` (may be negative) to ``entry`` in each window that still holds it
        (a fixed window's period pinned by ``Window.at`` when charged)."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class _Log:
    entries: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)  # [time, amount]
    total: int = 0

    def prune(self, before: float) -> None:
        while self.entries:
            entry, (at, amount) = next(iter(self.entries.items()))
            if at > before:
                return
            self.total -= int(amount)
            del self.entries[entry]


class MemoryCounters:
    """Counters in this process (one replica). Safe on one event loop: nothing awaits between
    the check and the charge."""

    def __init__(self) -> None:
        self._logs: dict[str, _Log] = {}
        self._fixed: dict[str, tuple[int, float]] = {}  # name -> (value, expires at)
        self._next_purge = 0.0

    async def charge(self, windows: Sequence[Window], amount: int, minimum: int, entry: str,
                     now: float) -> Charge:
        self._purge(now)
        used = []
        for w in windows:
            if w.sliding:
                counter = self._logs.setdefault(w.name, _Log())
                counter.prune(now - w.length_s)
                used.append(counter.total)
            else:
                used.append(self._fixed_value(w.counter(now), now))
        grant = min([amount, *(w.limit - u for w, u in zip(windows, used, strict=True))])
        granted = grant if grant >= minimum else 0
        if granted:
            for w in windows:
                if w.sliding:
                    counter = self._logs[w.name]
                    counter.entries[entry] = [now, granted]
                    counter.total += granted
                else:
                    value = self._fixed_value(w.counter(now), now)
                    self._fixed[w.counter(now)] = (value + granted, w.end_s(now) + GRACE_S)
        waits = [self._wait(w, u + granted, None if granted or not amount else minimum, now)
                 for w, u in zip(windows, used, strict=True)]
        return Charge(granted, used, waits, now)

    async def adjust(self, windows: Sequence[Window], entry: str, delta: int) -> None:
        for w in windows:
            if w.sliding:
                counter = self._logs.get(w.name)
                if counter is not None and entry in counter.entries:
                    counter.entries[entry][1] += delta
                    counter.total += delta
            elif w.period is not None and w.counter(0) in self._fixed:
                value, expires = self._fixed[w.counter(0)]
                self._fixed[w.counter(0)] = (value + delta, expires)

    async def aclose(self) -> None:
        self._logs.clear()
        self._fixed.clear()

    def _wait(self, w: Window, used: int, need: int | None, now: float) -> float:
        """Seconds until ``w`` has room for ``need`` units (None: until it is empty)."""
        if not w.sliding:
            return max(0.0, w.end_s(now) - now)
        counter = self._logs.get(w.name)
        entries = list(counter.entries.values()) if counter is not None else []
        if need is None:
            return max(0.0, entries[-1][0] + w.length_s - now) if entries else 0.0
        room = w.limit - used
        if room >= need:
            return 0.0
        for at, amount in entries:
            room += int(amount)
            if room >= need:
                return max(0.0, at + w.length_s - now)
        return float(w.length_s)

    def _fixed_value(self, name: str, now: float) -> int:
        entry = self._fixed.get(name)
        if entry is None:
            return 0
        if entry[1] <= now:
            del self._fixed[name]
            return 0
        return entry[0]

    def _purge(self, now: float) -> None:
        """Drop idle counters (a key that stopped sending keeps no memory)."""
        if now < self._next_purge:
            return
        self._next_purge = now + GRACE_S
        for name in [n for n, (_, expires) in self._fixed.items() if expires <= now]:
            del self._fixed[name]
        for name in [n for n, c in self._logs.items()
                     if not c.entries or next(reversed(c.entries.values()))[0] < now - 86_400]:
            del self._logs[name]


# KEYS: the windows' names. ARGV: now ('' for Redis's own clock, TIME), amount, minimum,
# entry, then per window its limit, length (s), sliding flag (1/0) and period (fixed windows;
# '' for the period now is in). A sliding window NAME is NAME:z (entries by time), NAME:h
# (entry -> amount) and NAME:t (the total); a fixed one's counter is NAME:period.
# Returns {granted or 0, each window's use before, each window's wait in ms, now in ms}; an
# amount of 0 charges nothing and returns each window's wait until it is empty, as a granted
# charge does. (TIME before writes needs Redis >= 5, which replicates a script's effects.)
_CHARGE_LUA = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local amount = tonumber(ARGV[2])
local minimum = tonumber(ARGV[3])
local entry = ARGV[4]
local fixed, ends = {}, {}
for i, key in ipairs(KEYS) do
  if ARGV[3 + 4 * i] ~= '1' then
    local len = tonumber(ARGV[2 + 4 * i])
    local period = tonumber(ARGV[4 + 4 * i]) or math.floor(now / len)
    fixed[i] = key .. ':' .. string.format('%d', period)
    ends[i] = (period + 1) * len
  end
end
local used = {}
local grant = amount
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 4 * i])
  if ARGV[3 + 4 * i] == '1' then
    local z, h, t = key .. ':z', key .. ':h', key .. ':t'
    local horizon = now - tonumber(ARGV[2 + 4 * i])
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', horizon)
    if #old > 0 then
      local freed = 0
      for _, e in ipairs(old) do
        freed = freed + tonumber(redis.call('HGET', h, e) or '0')
        redis.call('HDEL', h, e)
      end
      redis.call('ZREMRANGEBYSCORE', z, '-inf', horizon)
      redis.call('DECRBY', t, freed)
    end
    used[i] = tonumber(redis.call('GET', t) or '0')
  else
    used[i] = tonumber(redis.call('GET', fixed[i]) or '0')
  end
  if limit - used[i] < grant then grant = limit - used[i] end
end
local granted = 0
if grant >= minimum then granted = grant end
local out = {granted}
for i, key in ipairs(KEYS) do
  local len = tonumber(ARGV[2 + 4 * i])
  if granted > 0 then
    if ARGV[3 + 4 * i] == '1' then
      local z, h, t = key .. ':z', key .. ':h', key .. ':t'
      redis.call('ZADD', z, now, entry)
      redis.call('HINCRBY', h, entry, granted)
      redis.call('INCRBY', t, granted)
      for _, k in ipairs({z, h, t}) do redis.call('EXPIRE', k, len + 60) end
    else
      redis.call('INCRBY', fixed[i], granted)
      redis.call('EXPIRE', fixed[i], math.ceil(ends[i] - now) + 60)
    end
  end
  out[1 + i] = used[i]
end
for i, key in ipairs(KEYS) do
  local len = tonumber(ARGV[2 + 4 * i])
  local wait = 0
  if ARGV[3 + 4 * i] ~= '1' then
    wait = ends[i] - now
  elseif granted > 0 or amount == 0 then
    local newest = redis.call('ZRANGE', key .. ':z', -1, -1, 'WITHSCORES')
    if #newest > 0 then wait = tonumber(newest[2]) + len - now end
  else
    local room = tonumber(ARGV[1 + 4 * i]) - used[i]
    if room < minimum then
      wait = len
      local h = key .. ':h'
      local entries = redis.call('ZRANGE', key .. ':z', 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        room = room + tonumber(redis.call('HGET', h, entries[j]) or '0')
        if room >= minimum then
          wait = tonumber(entries[j + 1]) + len - now
          break
        end
      end
    end
  end
  if wait < 0 then wait = 0 end
  out[1 + #KEYS + i] = math.ceil(wait * 1000)
end
out[2 + 2 * #KEYS] = math.floor(now * 1000)
return out
"""
# KEYS: the windows' names (a fixed one's with its period); ARGV: entry, delta, then each
# window's sliding flag (1/0). Adds
# delta to the entry in each window still holding it (an expired window needs no refund).
_ADJUST_LUA = """
for i, key in ipairs(KEYS) do
  if ARGV[2 + i] == '1' then
    if redis.call('HEXISTS', key .. ':h', ARGV[1]) == 1 then
      redis.call('HINCRBY', key .. ':h', ARGV[1], ARGV[2])
      redis.call('INCRBY', key .. ':t', ARGV[2])
    end
  elseif redis.call('EXISTS', key) == 1 then
    redis.call('INCRBY', key, ARGV[2])
  end
end
return 0
"""


class RedisCounters:
    """Counters in Redis, shared by every replica pointing at the same ``redis_url`` (one
    Redis server, 5 or later: a window's keys are derived inside the scripts, so Redis Cluster
    is not supported).

    Every charge is dated by Redis's clock (``TIME`` inside the script), never the caller's
    ``now``, so replicas whose clocks disagree still share one window. ``callers_clock=True``
    dates charges by ``now`` instead: for tests that replay a timeline on one Redis, never
    for replicas.

    Raises ``Overloaded`` (503) from ``charge`` when Redis does not answer within
    ``REDIS_TIMEOUT_S``: without its counters the gateway cannot tell what a key has left.
    """

    def __init__(self, url: str, *, callers_clock: bool = False):
        import redis.asyncio as redis

        self._callers_clock = callers_clock
        self._redis = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                     socket_connect_timeout=REDIS_TIMEOUT_S)
        self._charge = self._redis.register_script(_CHARGE_LUA)
        self._adjust = self._redis.register_script(_ADJUST_LUA)

    async def charge(self, windows: Sequence[Window], amount: int, minimum: int, entry: str,
                     now: float) -> Charge:
        from redis.exceptions import RedisError

        argv: list[int | float | str] = [repr(now) if self._callers_clock else "", amount,
                                         minimum, entry]
        for w in windows:
            argv += [w.limit, w.length_s, int(w.sliding),
                     "" if w.period is None else w.period]
        try:
            reply = await asyncio.wait_for(
                self._charge(keys=[w.name for w in windows], args=argv), REDIS_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            # The URL may carry a password: name the failure, not the connection.
            log.warning("the rate-limit counters (Redis) failed: %s", type(exc).__name__)
            raise Overloaded("the gateway cannot check this key's limits right now",
                             code="limits_unavailable") from exc
        n = len(windows)
        return Charge(int(reply[0]), [int(v) for v in reply[1:1 + n]],
                      [int(v) / 1000 for v in reply[1 + n:1 + 2 * n]], int(reply[1 + 2 * n]) / 1000)

    async def adjust(self, windows: Sequence[Window], entry: str, delta: int) -> None:
        await asyncio.wait_for(
            self._adjust(keys=[w.counter(0) for w in windows],
                         args=[entry, delta, *(int(w.sliding) for w in windows)]),
            REDIS_TIMEOUT_S)

    async def aclose(self) -> None:
        await self._redis.aclose()


def seconds(wait_s: float) -> int:
    """A wait in whole seconds for headers and messages (at least 1 when positive)."""
    return max(0, math.ceil(wait_s))


def now_s() -> float:
    """The Unix time in seconds (the counters' clock)."""
    return time.time()
