"""Where a finished request is reported: one ``Outcome`` per client request, one ``Reporter``.

Every strategy ends by building an ``Outcome`` and calling ``Reporter.report``; the reporter
turns it into Prometheus samples (and, with the request log, into a durable row). Keeping
this in one place means a new strategy cannot forget a metric, and the log and the metrics
always agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from router_models.plan import Plan
from service import metrics
from service.store import Record

if TYPE_CHECKING:
    from service.store.log import RequestLog


@dataclass(frozen=True)
class Outcome:
    """What one client request did and cost.

    Tokens are upstream tokens summed over every call (``estimated`` when a backend reported
    none); ``duration_s`` is the whole request, ``wait_s`` the part spent waiting on backends.
    ``status`` is the HTTP status sent, as a string ("200", "502", ...). ``policy`` and
    ``arm`` are None when the request had none. ``key_name`` is the API key's name (None
    without keys); ``plan`` the plan executed; ``prompt_text`` / ``answer_text`` reach the
    request log only when the operator opted in (``log_text``). ``extra["early_stop"]`` marks
    a vote that stopped before drawing every planned sample.
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
    key_name: str | None = None
    experiment: str | None = None
    plan: Plan | None = None
    prompt_text: str | None = None
    answer_text: str | None = None


class Reporter:
    """Records outcomes: Prometheus samples, and a row of the request log when there is one.

    Args:
        request_log: where rows go (None: metrics only).
        keep_text: whether rows keep the prompt and answer text.

    Safe to call from any request handler on the event loop; never raises for a well-formed
    ``Outcome`` and never waits (the row is queued, see ``service.store.log``).
    """

    def __init__(self, request_log: RequestLog | None = None, *, keep_text: bool = False):
        self.request_log = request_log
        self.keep_text = keep_text

    def report(self, outcome: Outcome) -> None:
        policy = outcome.policy or metrics.NO_LABEL
        arm = outcome.arm or metrics.NO_LABEL
        metrics.child(metrics.REQUESTS, outcome.strategy, policy, arm, outcome.model,
                      outcome.status).inc()
        metrics.record_tokens(outcome.strategy, policy, arm, outcome.model,
                              outcome.prompt_tokens, outcome.completion_tokens)
        metrics.child(metrics.REQUEST_DURATION, outcome.strategy).observe(outcome.duration_s)
        metrics.OVERHEAD.observe(max(0.0, outcome.duration_s - outcome.wait_s))
        if outcome.prompt_tokens:
            metrics.child(metrics.REQUEST_PROMPT_TOKENS, outcome.strategy).observe(
                outcome.prompt_tokens)
        if outcome.budget_tokens:
            metrics.child(metrics.BUDGET_TOKENS, outcome.strategy).observe(outcome.budget_tokens)
            metrics.child(metrics.BUDGET_UTILIZATION, outcome.strategy).observe(
                outcome.completion_tokens / outcome.budget_tokens)
        if outcome.strategy == "parallel_vote":
            metrics.child(metrics.VOTE_SAMPLES, policy).observe(outcome.samples)
            if outcome.extra.get("early_stop"):
                metrics.child(metrics.VOTE_EARLY_STOPS, policy).inc()
        if outcome.experiment is not None and outcome.arm is not None:
            metrics.child(metrics.EXPERIMENT_TOKENS, outcome.experiment, outcome.arm).inc(
                outcome.completion_tokens)
        if outcome.key_name is not None:
            if outcome.prompt_tokens:
                metrics.child(metrics.KEY_TOKENS, outcome.key_name, "prompt").inc(
                    outcome.prompt_tokens)
            if outcome.completion_tokens:
                metrics.child(metrics.KEY_TOKENS, outcome.key_name, "completion").inc(
                    outcome.completion_tokens)
        if self.request_log is not None:
            self.request_log.submit(Record.from_outcome(outcome, time_s=time.time(),
                                                        keep_text=self.keep_text))
