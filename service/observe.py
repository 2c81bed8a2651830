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
    a vote that stopped before drawing every planned sample. ``propensity`` is the
    probability with which this request got its plan (the A/B arm's share times the policy's
    probability of the plan); ``controls`` the request's ``strategy`` and ``budget_tokens`` as
    the policy read them; ``prompt_key`` what identifies the prompt for learning
    (``router_models.prompt.prompt_key``, logged with the plan).
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
    propensity: float | None = None
    controls: dict[str, Any] | None = None
    prompt_key: str | None = None


class Reporter:
    """Records outcomes: Prometheus samples, and a row of the request log when there is one.

    Args:
        request_log: where rows go (None: metrics only).
        keep_text: whether rows keep the prompt and answer text.
        durable: whether the route waits for a row's commit before answering
            (``committed``); without it ``committed`` returns at once.

    Safe to call from any request handler on the event loop; never raises for a well-formed
    ``Outcome`` and never waits (the row is queued, see ``service.store.log``).
    """

    def __init__(self, request_log: RequestLog | None = None, *, keep_text: bool = False,
                 durable: bool = False):
        self.request_log = request_log
        self.keep_text = keep_text
        self.durable = durable and request_log is not None
        self._tickets: dict[str, int] = {}  # decision id -> the request log's ticket

    def forget(self, decision_id: str) -> None:
        """Drop the ticket of a reported request nobody will wait for."""
        self._tickets.pop(decision_id, None)

    async def committed(self, decision_id: str) -> None:
        """Wait until the row of the reported request ``decision_id`` is committed (durable
        reporters only; a no-op otherwise)."""
        ticket = self._tickets.pop(decision_id, 0)
        if ticket and self.request_log is not None:
            await self.request_log.committed(ticket)

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
            # Counted here, with the request's row, not at assignment: a request refused after
            # its arm was drawn (and retried) would count again and again.
            metrics.child(metrics.EXPERIMENT_ASSIGNMENTS, outcome.experiment, outcome.arm).inc()
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
            ticket = self.request_log.submit(record_of(outcome, time_s=time.time(),
                                                       keep_text=self.keep_text))
            # Only answered requests wait (the route pops the ticket, or forgets it when a
            # stream ended without its last event).
            if self.durable and ticket and outcome.status == "200":
                self._tickets[outcome.decision_id] = ticket


def record_of(outcome: Outcome, *, time_s: float, keep_text: bool) -> Record:
    """The request log's row for ``outcome``, finished at ``time_s`` (Unix seconds); prompt
    and answer text are kept only when ``keep_text``. The row's ``plan`` is the plan's fields
    plus, for replay, ``propensity`` (the probability of this plan for this request: the
    arm's share times the policy's probability), ``controls`` (the request's own
    ``strategy`` and ``budget_tokens``, which the deciding policy read) and, for learning,
    ``prompt_key`` (``router_models.prompt.prompt_key``; kept whether or not the text is)."""
    plan = outcome.plan
    logged_plan = None
    if plan is not None:
        # vars(), not asdict(): a Plan holds only scalars, and asdict's deep copy was a
        # visible share of the gateway's CPU per request.
        logged_plan = dict(vars(plan))
        if outcome.propensity is not None:
            logged_plan["propensity"] = outcome.propensity
        if outcome.controls is not None:
            logged_plan["controls"] = dict(outcome.controls)
        if outcome.prompt_key is not None:
            # The learner counts each prompt once per strategy (LearnedPolicy.update).
            logged_plan["prompt_key"] = outcome.prompt_key
    return Record(
        decision_id=outcome.decision_id, response_id=outcome.response_id, time_s=time_s,
        endpoint=outcome.endpoint, key_name=outcome.key_name, model=outcome.model,
        strategy=outcome.strategy, policy=outcome.policy, arm=outcome.arm,
        experiment=outcome.experiment, status=outcome.status,
        budget_tokens=outcome.budget_tokens, prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens, estimated=outcome.estimated,
        upstream_calls=outcome.upstream_calls, samples=outcome.samples,
        search_calls=outcome.search_calls, duration_s=outcome.duration_s,
        wait_s=outcome.wait_s, stream=outcome.stream,
        scores=dict(outcome.scores) if outcome.scores is not None else None,
        plan=logged_plan,
        votes=dict(outcome.votes) if outcome.votes is not None else None,
        prompt_text=outcome.prompt_text if keep_text else None,
        answer_text=outcome.answer_text if keep_text else None,
    )
