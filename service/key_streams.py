"""Each API key's open streams on this replica: at most ``key_max_concurrent_streams`` at once.

A stream holds its backend's concurrency slot (``service.breaker.ConcurrencyGate``) for as long
as its client reads it, and one key could open any number of them: enough streams of one
tenant would fill ``backend_max_concurrency``, and every other tenant's calls would wait, then
get 503s. So a keyed request that asks for a stream (a completion's or a forwarded call's
``"stream": true``) takes one of its key's places first, or is refused with a 429
(``rate_limit_streams``, ``Retry-After: 1``: a stream's end cannot be foreseen), and
``AdmissionMiddleware`` gives the place back when the response is over, however it ended: its
last event, its client leaving or stalling, its backend failing, the shutdown deadline.

Each key's count is exported as ``ttc_key_open_streams{key_name}`` (0 once its streams end: the
operator's key names, a bounded set, as ``ttc_key_tokens_total`` has them); a refusal counts in
``ttc_rejected_total{reason="rate_limit_streams"}``.

The count is per replica, as the backends' concurrency gates are: a stream lives in the
process that serves it and ends with it, so a count in memory is exact and never outlives a
killed replica (a count in Redis would need leases that expire); behind a balancer of N
replicas a key may hold up to N times the cap.
"""

from __future__ import annotations

from service import metrics
from service.errors import RateLimited

# Seconds a refused client is told to wait: a stream's end cannot be foreseen.
RETRY_AFTER_S = 1.0


class StreamPlace:
    """One open stream of one key; ``release()`` gives its place back (once: later calls do
    nothing)."""

    def __init__(self, streams: KeyStreams, key_name: str):
        self._streams = streams
        self._key_name = key_name
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._streams._close(self._key_name)


class KeyStreams:
    """The open streams of each key, at most ``limit`` each (None: unlimited, still counted).

    Args:
        limit: ``key_max_concurrent_streams``.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self._open: dict[str, int] = {}

    def open(self, key_name: str) -> StreamPlace:
        """Take one of ``key_name``'s places; pair it with ``StreamPlace.release()``.

        Raises:
            RateLimited: the key holds ``limit`` open streams already (429, code
                ``rate_limit_streams``, ``Retry-After`` 1 s).
        """
        count = self._open.get(key_name, 0)
        if self.limit is not None and count >= self.limit:
            raise RateLimited(
                f"this key may hold {self.limit} open streams at once on this gateway; close "
                f"one or retry in {RETRY_AFTER_S:g}s", retry_after_s=RETRY_AFTER_S,
                code="rate_limit_streams")
        self._open[key_name] = count + 1
        metrics.child(metrics.KEY_OPEN_STREAMS, key_name).set(count + 1)
        return StreamPlace(self, key_name)

    def open_streams(self, key_name: str) -> int:
        """The streams ``key_name`` holds open now."""
        return self._open.get(key_name, 0)

    def _close(self, key_name: str) -> None:
        count = self._open.get(key_name, 0) - 1
        metrics.child(metrics.KEY_OPEN_STREAMS, key_name).set(max(count, 0))
        if count > 0:
            self._open[key_name] = count
        else:  # a key with no stream open keeps no entry: the map stays as small as the load
            self._open.pop(key_name, None)
