"""Per-key limits: requests, completion tokens and prompt tokens per minute, and completion
tokens per UTC day.

The minute limits are sliding windows (any 60 seconds, ``service.counters``), so a key cannot
spend twice its limit across a minute boundary; the day's is a quota that resets at 00:00 UTC.
A request takes one unit of the request window when it arrives; a completion request then
*reserves* its tokens before any upstream call (its budget of completion tokens, and its
estimated prompt tokens times the upstream calls it may make), and is *settled* with the
tokens it really spent when it ends, so requests running together can never be granted more
than a key has left. A reservation checks and charges every completion window in one atomic
step, so two limits cannot be half-charged.

Prompt tokens are known only once the backend has counted them, so their reservation is an
estimate (4 characters a token) settled with the backend's count: a request whose prompt was
under-estimated is charged the difference after the fact, and the key's next requests wait
for it. Completion tokens are the unit of ``budget_tokens``, which the gateway caps exactly.

The counters live in process (``MemoryCounters``: one replica) or in Redis (``RedisCounters``:
shared by every replica, and dated by Redis's clock, so replicas' clocks need not agree).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.counters import Counters, MemoryCounters, RedisCounters, Window, seconds
from service.errors import RateLimited
from service.keys import ApiKey

log = logging.getLogger(__name__)

MINUTE_S = 60
DAY_S = 86_400

__all__ = ["DAY_S", "MINUTE_S", "KeyLimiter", "MemoryCounters", "RedisCounters", "Reservation",
           "TokensOverLimit"]


@dataclass
class Reservation:
    """Tokens reserved for one request of one key, until it is settled.

    ``tokens``: completion tokens reserved (0 when the key has no completion-token limit);
    ``prompt_tokens``: prompt tokens reserved (0 without a prompt-token limit); ``spent`` and
    ``prompt_spent``: the true counts, set by ``settle_with`` when the request's outcome is
    recorded (None until then: a request that never reached its record is charged its whole
    reservation). ``entry`` names the reservation in the sliding windows.
    """

    key_name: str
    tokens: int = 0
    windows: tuple[Window, ...] = ()
    prompt_tokens: int = 0
    prompt_windows: tuple[Window, ...] = ()
    entry: str = ""
    spent: int | None = None
    prompt_spent: int | None = None
    settled: bool = field(default=False, repr=False)

    def settle_with(self, spent_tokens: int, prompt_tokens: int | None = None) -> None:
        """Note what the request really spent (completion tokens, and prompt tokens when
        known); the ``KeyLimiter`` applies it to the counters once the response is sent."""
        self.spent = spent_tokens
        if prompt_tokens is not None:
            self.prompt_spent = prompt_tokens


class KeyLimiter:
    """Applies each key's limits to its counters.

    Args:
        counters: ``MemoryCounters`` or ``RedisCounters``.
        clock: Unix time in seconds (tests move it): the time of ``MemoryCounters``; shared
            counters date charges by their own clock, as replicas' clocks disagree.
        prefix: the counters' name prefix.
    """

    def __init__(self, counters: Counters, clock: Callable[[], float] = time.time,
                 prefix: str = "ttc:limit:"):
        self.counters = counters
        self.clock = clock
        self._prefix = prefix

    async def admit_request(self, key: ApiKey) -> dict[str, str]:
        """Count one request against ``key.rpm`` (any 60 seconds); returns the
        ``x-ratelimit-*-requests`` headers.

        Raises:
            RateLimited: the key made ``rpm`` requests in the last minute (429,
                ``Retry-After``: when the oldest of them leaves the window).
            Overloaded: the shared counters do not answer (503).
        """
        return await self._admit(key, "rpm", "requests")

    async def admit_feedback(self, key: ApiKey) -> dict[str, str]:
        """Count one ``POST /v1/feedback`` against the key's feedback window: ``key.rpm``
        feedbacks in any 60 seconds, counted apart from its requests. Feedback spends no
        tokens and reports on an answer the key was already allowed, so it must not take an
        answer's place (with ``--rpm 4``, two answers and their two feedbacks refused the
        third answer); but each one is a write to the request log, so it is not unlimited
        either: one feedback a minute per request a minute. Returns the
        ``x-ratelimit-*-feedback`` headers.

        Raises:
            RateLimited: the key posted ``rpm`` feedbacks in the last minute (429,
                ``Retry-After``).
            Overloaded: the shared counters do not answer (503).
        """
        return await self._admit(key, "feedback", "feedback")

    async def _admit(self, key: ApiKey, counter: str, what: str) -> dict[str, str]:
        """One unit of the key's ``counter`` window (``key.rpm`` units in any 60 seconds);
        the ``x-ratelimit-*-{what}`` headers, or ``RateLimited`` (code
        ``rate_limit_{what}``)."""
        if key.rpm is None:
            return {}
        window = Window(f"{self._prefix}{key.name}:{counter}", key.rpm, MINUTE_S)
        charge = await self.counters.charge([window], 1, 1, secrets.token_hex(8), self.clock())
        remaining = max(0, key.rpm - charge.used[0] - charge.granted)
        headers = {f"x-ratelimit-limit-{what}": str(key.rpm),
                   f"x-ratelimit-remaining-{what}": str(remaining),
                   f"x-ratelimit-reset-{what}": f"{seconds(charge.wait_s[0])}s"}
        if not charge.granted:
            wait = max(charge.wait_s[0], 0.001)
            noun = "requests" if what == "requests" else "feedbacks"
            if what == "requests":
                # The refusal tells everything the key's answers tell (its token limits
                # too, as OpenAI's 429s do), so a client can back off on either.
                headers.update(await self.token_headers(key))
            raise RateLimited(f"this key may make {key.rpm} {noun} per minute; retry in "
                              f"{seconds(wait)}s", retry_after_s=wait,
                              code=f"rate_limit_{what}", rate_headers=headers)
        return headers

    async def token_headers(self, key: ApiKey) -> dict[str, str]:
        """The ``x-ratelimit-{limit,remaining,reset}-tokens`` headers of the key's
        completion-token limits (the tightest window) and the ``...-prompt-tokens`` ones of
        its prompt-token limit, as they stand now; charges nothing ({} for a key without
        token limits).

        Raises:
            Overloaded: the shared counters do not answer (503).
        """
        now = self.clock()
        windows = self._token_windows(key)
        prompt = self._prompt_windows(key)
        if not windows and not prompt:
            return {}
        charge = await self.counters.charge([*windows, *prompt], 0, 0, "", now)
        n = len(windows)
        headers = _tokens_headers(windows, charge.used[:n], 0, charge.wait_s[:n])
        if prompt:
            headers.update(_headers("prompt-tokens", prompt[0].limit,
                                    prompt[0].limit - charge.used[n], charge.wait_s[n]))
        return headers

    async def reserve_tokens(self, key: ApiKey, tokens: int | None, flexible_cap: int,
                             prompt_tokens: int = 0) -> tuple[Reservation, dict[str, str]]:
        """Reserve ``tokens`` completion tokens for one request, or, when ``tokens`` is None
        (the request set no cap), as many as the key has left up to ``flexible_cap``; and
        ``prompt_tokens`` (an estimate) against the key's prompt-token limit.

        Returns the reservation and the ``x-ratelimit-*-tokens`` headers (completion tokens),
        with the ``x-ratelimit-*-prompt-tokens`` ones for a key with a prompt-token limit; a
        refusal carries the same headers.

        Raises:
            TokensOverLimit: ``tokens`` or ``prompt_tokens`` is more than a window's whole
                limit (no wait helps).
            RateLimited: the minute's or the day's tokens are used up (429, ``Retry-After``).
            Overloaded: the shared counters do not answer (503).
        """
        entry = secrets.token_hex(8)
        now = self.clock()
        prompt_windows: tuple[Window, ...] = ()
        prompt_headers: dict[str, str] = {}
        if key.prompt_tpm is not None and prompt_tokens > 0:
            if prompt_tokens > key.prompt_tpm:
                raise TokensOverLimit(prompt_tokens, key.prompt_tpm, kind="prompt")
            prompt_windows = self._prompt_windows(key)
            charge = await self.counters.charge(prompt_windows, prompt_tokens, prompt_tokens,
                                                entry, now)
            prompt_used, prompt_wait = charge.used[0], charge.wait_s[0]
            left = key.prompt_tpm - prompt_used - charge.granted
            prompt_headers = _headers("prompt-tokens", key.prompt_tpm, left, prompt_wait)
            if not charge.granted:
                wait = max(charge.wait_s[0], 0.001)
                # The completion-token headers too, as every answer of the key carries them.
                completion = await self.token_headers(dataclasses.replace(key, prompt_tpm=None))
                raise RateLimited(
                    f"this key may send {key.prompt_tpm} prompt tokens per minute; "
                    f"{max(0, left)} are left and this request needs about {prompt_tokens}; "
                    f"retry in {seconds(wait)}s", retry_after_s=wait,
                    code="rate_limit_prompt_tokens",
                    rate_headers={**completion, **prompt_headers})
        elif key.prompt_tpm is not None:  # nothing to reserve: the limit's headers all the same
            prompt_headers = await self.token_headers(dataclasses.replace(
                key, tpm=None, tokens_per_day=None))
        reservation = Reservation(key.name, prompt_tokens=prompt_tokens if prompt_windows else 0,
                                  prompt_windows=prompt_windows, entry=entry)
        if not key.limits_tokens:
            return reservation, prompt_headers
        windows = self._token_windows(key)
        limits = [w.limit for w in windows]
        if tokens is not None and tokens > min(limits):
            await self._release_prompt(reservation)
            raise TokensOverLimit(tokens, min(limits))
        amount = flexible_cap if tokens is None else tokens
        minimum = 1 if tokens is None else amount
        charge = await self.counters.charge(windows, amount, minimum, entry, now)
        headers = {**_tokens_headers(windows, charge.used, charge.granted, charge.wait_s),
                   **prompt_headers}
        if not charge.granted:
            await self._release_prompt(reservation)
            if key.prompt_tpm is not None and reservation.prompt_tokens:  # given back
                headers.update(_headers("prompt-tokens", key.prompt_tpm,
                                        key.prompt_tpm - prompt_used, prompt_wait))
            # The window that refused: the one that frees room last.
            refusing = max((i for i in range(len(windows)) if windows[i].limit
                            - charge.used[i] < minimum), key=lambda i: charge.wait_s[i])
            window = windows[refusing]
            wait = max(charge.wait_s[refusing], 0.001)
            what = "per minute" if window.sliding else "per day (UTC)"
            raise RateLimited(
                f"this key may spend {window.limit} completion tokens {what}; "
                f"{max(0, window.limit - charge.used[refusing])} are left and this request "
                f"needs {minimum}; retry in {seconds(wait)}s",
                retry_after_s=wait,
                code="rate_limit_tokens" if window.sliding else "daily_budget_exhausted",
                rate_headers=headers)
        reservation.tokens = charge.granted
        # Pinned to the day charged, by the counters' clock, for the settlement.
        reservation.windows = tuple(w.at(charge.now_s) for w in windows)
        return reservation, headers

    async def settle(self, reservation: Reservation) -> None:
        """Give back what a finished request did not spend (or charge an overrun). Idempotent;
        a failure is logged, never raised (the response is already sent)."""
        if reservation.settled:
            return
        reservation.settled = True
        parts = []
        if reservation.windows and reservation.spent is not None:
            parts.append((reservation.windows, reservation.spent - reservation.tokens))
        if reservation.prompt_windows and reservation.prompt_spent is not None:
            parts.append((reservation.prompt_windows,
                          reservation.prompt_spent - reservation.prompt_tokens))
        for windows, delta in parts:
            if delta == 0:
                continue
            try:
                await self.counters.adjust(windows, reservation.entry, delta)
            except Exception as exc:  # Redis down: the reservation stays charged as it was
                log.warning("could not settle a token reservation of key %s: %s",
                            reservation.key_name, type(exc).__name__)

    async def aclose(self) -> None:
        await self.counters.aclose()

    async def _release_prompt(self, reservation: Reservation) -> None:
        if reservation.prompt_windows and reservation.prompt_tokens:
            try:
                await self.counters.adjust(reservation.prompt_windows, reservation.entry,
                                           -reservation.prompt_tokens)
            except Exception as exc:
                log.warning("could not release a prompt reservation of key %s: %s",
                            reservation.key_name, type(exc).__name__)

    def _prompt_windows(self, key: ApiKey) -> tuple[Window, ...]:
        """The prompt-token window (the last minute, sliding), or none without the limit."""
        if key.prompt_tpm is None:
            return ()
        return (Window(f"{self._prefix}{key.name}:ptpm", key.prompt_tpm, MINUTE_S),)

    def _token_windows(self, key: ApiKey) -> list[Window]:
        """The completion-token windows: the last minute (sliding), and the UTC day (fixed,
        from 00:00 UTC)."""
        windows = []
        if key.tpm is not None:
            windows.append(Window(f"{self._prefix}{key.name}:tpm", key.tpm, MINUTE_S))
        if key.tokens_per_day is not None:
            # The day is the counters' (their clock's period of DAY_S), so that replicas on
            # either side of midnight by their own clocks count one day.
            windows.append(Window(f"{self._prefix}{key.name}:tpd", key.tokens_per_day, DAY_S,
                                  sliding=False))
        return windows


def _headers(what: str, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{what}`` for one window."""
    return {f"x-ratelimit-limit-{what}": str(limit),
            f"x-ratelimit-remaining-{what}": str(max(0, remaining)),
            f"x-ratelimit-reset-{what}": f"{seconds(reset_s)}s"}


def _tokens_headers(windows: list[Window], used: list[int], granted: int,
                    waits: list[float]) -> dict[str, str]:
    """The ``x-ratelimit-*-tokens`` headers of the completion-token window with the least
    room after ``granted`` ({} without windows)."""
    if not windows:
        return {}
    rooms = [w.limit - u - granted for w, u in zip(windows, used, strict=True)]
    tightest = min(range(len(rooms)), key=lambda i: rooms[i])
    return _headers("tokens", windows[tightest].limit, rooms[tightest], waits[tightest])


class TokensOverLimit(Exception):
    """A request asks for more tokens than a key may spend in a whole window: ``kind``
    "completion" (its budget) or "prompt" (its estimated prompt tokens over every call)."""

    def __init__(self, tokens: int, limit: int, kind: str = "completion"):
        advice = ("lower max_tokens or router.budget_tokens" if kind == "completion" else
                  "shorten the prompt or make fewer calls (n, the vote's width)")
        super().__init__(f"this request may use {tokens} {kind} tokens, more than this key "
                         f"may use in a whole window ({limit}); {advice}")
        self.tokens = tokens
        self.limit = limit
        self.kind = kind
