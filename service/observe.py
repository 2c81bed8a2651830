"""Where a finished request is reported: one ``Outcome`` per client request, one ``Reporter``.

Every strategy ends by building an ``Outcome`` and calling ``Reporter.report``; the reporter
turns it into Prometheus samples (and, with the request log, into a durable row). Keeping
this in one place means a new strategy cannot forget a metric, and the log and the metrics
always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service import metrics


@dataclass(frozen=True)
class Outcome:
    """What one client request did and cost.

    Tokens are upstream tokens summed over every call (``estimated`` when a backend reported
    none); ``duration_s`` is the whole request, ``wait_s`` the part spent waiting on backends.
    ``status`` is the HTTP status sent, as a string ("200", "502", ...). ``policy`` and
    ``arm`` are None when the request had none.
    """

    decision_id: str
    response_id: str | None
    endpoint: str
    model: str
    strategy: str
    policy: str | None
    arm: str | None
    status: str
    budget_tokens: int | None
    prompt_tokens: int
    completion_tokens: int
    upstream_calls: int
    samples: int
    duration_s: float
    wait_s: float
    estimated: bool = False
    stream: bool = False
    scores: dict[str, float] | None = None
    votes: dict[str, int] | None = None
    search_calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Reporter:
    """Records outcomes. Safe to call from any request handler; never raises for a
    well-formed ``Outcome``."""

    def report(self, outcome: Outcome) -> None:
        policy = outcome.policy or metrics.NO_LABEL
        arm = outcome.arm or metrics.NO_LABEL
        metrics.child(metrics.REQUESTS, outcome.strategy, policy, arm, outcome.model,
                      outcome.status).inc()
        metrics.record_tokens(outcome.strategy, policy, arm, outcome.model,
                              outcome.prompt_tokens, outcome.completion_tokens)
        metrics.child(metrics.REQUEST_DURATION, outcome.strategy).observe(outcome.duration_s)
        metrics.OVERHEAD.observe(max(0.0, outcome.duration_s - outcome.wait_s))
