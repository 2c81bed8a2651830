"""A retry budget: retries to one backend bounded by a share of the calls made to it.

Per-call retry limits multiply under failure: every call of every request retries at once,
and a struggling backend receives several times its normal load (a retry storm). A retry
budget bounds retries across requests instead: over a sliding window of ``window_s`` seconds,
retries may be at most ``ratio`` of the calls (first attempts) plus a floor of ``min_per_s``
retries per second, so that a backend with little traffic can still be retried.

This is Finagle's ``RetryBudget`` (``percentCanRetry`` 0.2, ``ttl`` 10 s,
``minRetriesPerSec`` 10 by default; https://twitter.github.io/finagle/guide/Clients.html#retries),
which Envoy's ``retry_budget`` (``budget_percent``, default 20%) follows for requests in
flight. Counts are kept in one-second buckets, so memory is constant whatever the traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RetryBudget:
    """Deposits (calls) and withdrawals (retries) over a sliding window.

    Args:
        ratio: retries allowed per call made, in [0, 1] (0.2: one retry per five calls).
        min_per_s: retries allowed per second whatever the traffic (>= 0).
        window_s: the window, in whole seconds (>= 1).
        clock: monotonic seconds (tests move it).
    """

    def __init__(self, *, ratio: float = 0.2, min_per_s: float = 10.0, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = max(1, int(window_s))
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, calls, retries], oldest first

    def deposit(self) -> None:
        """Count one call (a first attempt)."""
        self._bucket()[1] += 1

    def can_withdraw(self) -> bool:
        """Whether one more retry fits the budget now."""
        return self.available() >= 1

    def withdraw(self) -> None:
        """Count one retry (call ``can_withdraw`` first)."""
        self._bucket()[2] += 1

    def available(self) -> int:
        """Retries the budget allows now (the floor plus the share of calls, less retries
        made, over the window)."""
        self._expire()
        calls = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        return max(0, int(self.min_per_s * self.window_s + self.ratio * calls) - retries)

    def _bucket(self) -> list[int]:
        self._expire()
        second = int(self._clock())
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def _expire(self) -> None:
        oldest = int(self._clock()) - self.window_s + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
