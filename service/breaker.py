"""What protects each backend: a circuit breaker and a concurrency gate.

``CircuitBreaker``: a backend that fails ``failures_to_open`` times in a row (unreachable,
timed out, 5xx after retries, garbage, a broken stream; never a refusal of the request itself)
is taken out for ``cool_down_s`` seconds, during which ``BackendRegistry.resolve`` sends its
models' traffic to another upstream serving them, or answers 503 with ``Retry-After`` when
there is none. A client request counts once, however many of its calls and retries failed
(``service.upstream.count_failure``). After the
cool-down it is half-open: exactly one trial request goes to it (the others still go
elsewhere or get 503), its success closes the circuit and its failure opens it for another
cool-down; a trial that reports nothing for ``cool_down_s`` (its client went away) frees the
slot for another. The libraries looked at
(``pybreaker``, ``aiobreaker``) only count failures of calls made through their own
``call()`` wrapper, which does not fit a call whose failure may come after a stream has
started, and ``aiobreaker`` has not been released since 2021; so it is this small class.

``ConcurrencyGate``: at most ``limit`` calls in flight to one backend, at most ``max_waiting``
waiting for a slot, each for at most ``timeout_s`` seconds; past that the call is refused
with 503 and ``Retry-After`` rather than queued without bound.

State shows in ``ttc_circuit_open{backend}`` (1 while out) and ``ttc_upstream_in_flight
{backend}``; refusals in ``ttc_rejected_total{reason="overload"}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

from service import metrics
from service.errors import Overloaded

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """One backend's circuit.

    Args:
        backend: its label (metrics, logs).
        failures_to_open: consecutive failures that open the circuit.
        cool_down_s: seconds the circuit stays open before traffic is tried again.
        clock: monotonic seconds (tests move it).
    """

    def __init__(self, backend: str, failures_to_open: int, cool_down_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.backend = backend
        self.failures_to_open = failures_to_open
        self.cool_down_s = cool_down_s
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_started: float | None = None  # when the half-open trial was let through
        metrics.child(metrics.CIRCUIT_OPEN, backend).set(0)

    @property
    def state(self) -> State:
        """``closed``, ``open`` or ``half_open`` (an open circuit whose cool-down is over)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cool_down_s:
            self._state = "half_open"
            metrics.child(metrics.CIRCUIT_OPEN, self.backend).set(0)
            log.info("backend %s: cool-down over, trying it again", self.backend)
        return self._state

    def allows(self) -> bool:
        """Whether a new request may go to this backend now. While half-open, True for one
        request only (the trial), until it reports or ``cool_down_s`` passes."""
        state = self.state
        if state != "half_open":
            return state == "closed"
        now = self._clock()
        if self._trial_started is not None and now - self._trial_started < self.cool_down_s:
            return False
        self._trial_started = now
        return True

    def end_trial(self) -> None:
        """The half-open trial ended without a verdict on the backend (it refused the request
        itself, or asked for patience): another request may be the trial."""
        self._trial_started = None

    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets traffic through again (0 when it does now)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.cool_down_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        """One call succeeded: the circuit closes."""
        self._trial_started = None
        if self._state != "closed":
            log.info("backend %s answered again: circuit closed", self.backend)
            metrics.child(metrics.CIRCUIT_OPEN, self.backend).set(0)
        self._state = "closed"
        self._failures = 0

    def record_failure(self) -> None:
        """One call failed (after its retries): the circuit opens at ``failures_to_open`` in
        a row, or at once when half-open."""
        self._trial_started = None
        self._failures += 1
        if self.state == "half_open" or (
                self._state == "closed" and self._failures >= self.failures_to_open):
            self._state = "open"
            self._opened_at = self._clock()
            metrics.child(metrics.CIRCUIT_OPEN, self.backend).set(1)
            log.warning("backend %s failed %d times in a row: taken out for %.0fs",
                        self.backend, self._failures, self.cool_down_s)


class ConcurrencyGate:
    """Bounds the calls in flight to one backend and the calls waiting for a slot.

    Args:
        backend: its label (metrics, messages).
        limit: calls in flight at most.
        max_waiting: calls waiting for a slot at most; one more is refused at once.
        timeout_s: the longest a call waits for a slot (seconds).
    """

    def __init__(self, backend: str, limit: int, max_waiting: int, timeout_s: float):
        self.backend = backend
        self._slots = asyncio.Semaphore(limit)
        self._max_waiting = max_waiting
        self._timeout_s = timeout_s
        self._waiting = 0
        self._in_flight = metrics.child(metrics.UPSTREAM_IN_FLIGHT, backend)

    async def acquire(self) -> None:
        """Take a slot; pair every success with one ``release()``.

        Raises:
            Overloaded: the waiting room is full, or no slot freed up within ``timeout_s``
                (503 with ``Retry-After``).
        """
        if self._slots.locked():
            if self._waiting >= self._max_waiting:
                raise self._refuse("too many calls are waiting for it")
            self._waiting += 1
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._refuse(f"no call slot freed up in {self._timeout_s:g}s") from None
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        self._in_flight.inc()

    def release(self) -> None:
        self._in_flight.dec()
        self._slots.release()

    def _refuse(self, why: str) -> Overloaded:
        metrics.child(metrics.REJECTED, "overload").inc()
        return Overloaded(f"backend {self.backend} is saturated: {why}; retry shortly",
                          retry_after_s=1.0, code="backend_saturated")
