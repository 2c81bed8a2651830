"""A/B experiments in the gateway: which experiment a request joins, its sticky arm, the
arm's share of traffic (fixed, or adaptive by Thompson sampling), and the report.

A request joins the experiment its ``router.experiment`` (or ``x-ttc-experiment``) names, or
the operator's ``default_experiment`` when it asks for ``model: "auto"`` and names no policy or
strategy of its own (a backend model id passes through unchanged until its client opts in); an
unknown name is a 400. Its arm comes from a stable hash of (experiment, identity), the identity
being the request's ``user``, else its ``x-session-id`` header, else its API key's name; a
request with none of them is assigned at random and marked ``random`` (``router.assignment``).
The arm's policy plans the request; the arm is in the response (``router.arm``), the request
log and the metrics (``ttc_experiment_assignments_total``, ``ttc_experiment_tokens_total``,
``ttc_experiment_feedback_total`` and the ``arm`` label of the others).

Adaptive allocation (``adaptive: true``, off by default) re-reads the arms' totals from the
request log after every ``FEEDBACK_BETWEEN_REFRESHES`` feedbacks this process records and every
``experiment_refresh_s`` seconds (other replicas' feedback), and, once every arm has
``min_feedback`` feedback, sets the shares by ``router_models.experiments.thompson_shares``.
Shares are a pure function of the log's totals, so replicas reading the same log agree.

The statistics are ``router_models.experiments.stats``; ``build_report`` renders them in the
shape ../shared/INTERFACE.md gives for ``GET /v1/experiments/{name}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from router_models.experiments import (
    ArmTotals,
    Assignment,
    assign,
    compare_accuracy,
    difference_sequence,
    mean_interval,
    thompson_shares,
    wilson_interval,
)
from router_models.experiments.replay import (
    Controls,
    LoggedDecision,
    PlanKey,
    plan_key,
    target_distribution,
)
from router_models.plan import Plan, Scores
from router_models.policies import Policy, PolicyError
from service import metrics
from service.backends import AUTO_MODEL
from service.errors import InvalidRequest
from service.protocol import RoutedRequest
from service.settings import ExperimentSettings, Settings
from service.store import ArmRow, FeedbackApplied, Record, StoreError, is_correct
from service.store.log import RequestLog

log = logging.getLogger(__name__)

ALPHA = 0.05
FEEDBACK_BETWEEN_REFRESHES = 20
SEQUENTIAL_METHOD = ("normal-mixture confidence sequence per arm (Robbins 1970; Howard et al. "
                     "2021), valid at every look")


def identity_of(routed: RoutedRequest, session_id: str | None, key_name: str | None
                ) -> tuple[str | None, str]:
    """The identity a request is assigned by, and which one it is: the body's ``user``, else
    the ``x-session-id`` header, else the API key's name; ``(None, "random")`` without any."""
    user = routed.body.get("user")
    if isinstance(user, str) and user:
        return user, "user"
    if session_id:
        return session_id, "session"
    if key_name:
        return key_name, "key"
    return None, "random"


def configured_shares(config: ExperimentSettings) -> dict[str, float]:
    """The arms' configured weights as shares summing to 1, in configuration order."""
    total = sum(arm.weight for arm in config.arms.values())
    return {name: arm.weight / total for name, arm in config.arms.items()}


def arm_totals(config: ExperimentSettings, rows: list[ArmRow]) -> dict[str, ArmTotals]:
    """The configured arms' totals from the request log's rows (zeros for an arm without
    requests; rows of arms no longer configured are left out)."""
    by_arm = {row.arm: row for row in rows}
    out = {}
    for arm in config.arms:
        row = by_arm.get(arm)
        out[arm] = ArmTotals(arm) if row is None else ArmTotals(
            arm, row.requests, row.feedback, row.correct, row.tokens_sum, row.tokens_sumsq)
    return out


def current_shares(config: ExperimentSettings, totals: Mapping[str, ArmTotals]
                   ) -> tuple[dict[str, float], bool]:
    """The arms' shares now, and whether adaptive allocation is in force: the configured
    shares until the experiment is adaptive and every arm has ``min_feedback`` feedback, then
    Thompson sampling's (probability of being best, with the floor)."""
    if not config.adaptive or any(totals[arm].feedback < config.min_feedback
                                  for arm in config.arms):
        return configured_shares(config), False
    shares = thompson_shares([totals[arm] for arm in config.arms], floor=config.floor,
                             objective=config.objective,
                             lambda_per_1k_tokens=config.lambda_per_1k_tokens)
    return shares, True


def objective_value(config: ExperimentSettings, totals: ArmTotals) -> float | None:
    """The arm's estimated objective: accuracy, minus lambda x mean tokens / 1000 for
    ``accuracy_minus_tokens``; None without feedback."""
    accuracy = totals.accuracy
    if accuracy is None:
        return None
    if config.objective == "accuracy_minus_tokens":
        return accuracy - config.lambda_per_1k_tokens * (totals.mean_tokens or 0.0) / 1000.0
    return accuracy


def build_report(name: str, config: ExperimentSettings, rows: list[ArmRow]) -> dict[str, Any]:
    """The experiment's report (``GET /v1/experiments/{name}``, ``ttc-router ab report``).

    Per arm: requests, feedback, accuracy over the requests with feedback and its Wilson 95%
    interval, mean completion tokens per request and its t interval, correct answers per 1000
    completion tokens (accuracy / mean tokens x 1000), the configured weight and current
    share. ``comparison``: the best other arm (on accuracy) minus the first (control) arm, its
    score interval and p-value, for one look; with more than two arms, Bonferroni-adjusted
    over the other arms. ``sequential``: the same difference as an always-valid confidence
    sequence, and ``can_stop`` / ``winner`` once it excludes 0. ``leader``: the arm with the
    best estimated objective (None when arms tie): a point estimate, not a verdict.
    """
    totals = arm_totals(config, rows)
    shares, adaptive_now = current_shares(config, totals)
    arms: dict[str, Any] = {}
    for arm, t in totals.items():
        accuracy = t.accuracy
        mean_tokens = t.mean_tokens
        arms[arm] = {
            "policy": config.arms[arm].policy,
            "weight": config.arms[arm].weight,
            "share": round(shares[arm], 6),
            "requests": t.requests,
            "feedback": t.feedback,
            "accuracy": accuracy,
            "accuracy_ci95": _pair(wilson_interval(t.correct, t.feedback, ALPHA)),
            "mean_tokens": mean_tokens,
            "mean_tokens_ci95": _pair(mean_interval(t, ALPHA)),
            "correct_per_1k_tokens": (accuracy / mean_tokens * 1000.0
                                      if accuracy is not None and mean_tokens else None),
        }
    names = list(config.arms)
    control = totals[names[0]]
    others = [totals[a] for a in names[1:]]
    comparisons = max(1, len(others))
    alpha = ALPHA / comparisons
    treatment = max(others, key=lambda t: -1.0 if t.accuracy is None else t.accuracy,
                    default=None)
    comparison: dict[str, Any] = {"metric": "accuracy", "control": control.arm,
                                  "treatment": treatment.arm if treatment else None,
                                  "difference": None, "ci95": None, "p_value": None,
                                  "adjusted_for": comparisons}
    sequential: dict[str, Any] = {"method": SEQUENTIAL_METHOD, "alpha": ALPHA, "ci95": None,
                                  "can_stop": False, "winner": None}
    if treatment is not None:
        compared = compare_accuracy(control, treatment, alpha)
        if compared is not None:
            comparison.update(difference=compared.difference, ci95=list(compared.ci95),
                              p_value=min(1.0, compared.p_value * comparisons))
        seq = difference_sequence(control, treatment, alpha, config.planned_feedback)
        sequential.update(ci95=list(seq.ci95), can_stop=seq.can_stop, winner=seq.winner)
    values = {arm: objective_value(config, t) for arm, t in totals.items()}
    scored = {arm: v for arm, v in values.items() if v is not None}
    best = max(scored.values(), default=None)
    # Equal estimates lead nowhere: max() would name the first arm configured.
    leaders = [arm for arm, v in scored.items() if v == best]
    return {
        "object": "experiment",
        "name": name,
        "arms": arms,
        "comparison": comparison,
        "sequential": sequential,
        "allocation": {"adaptive": config.adaptive, "in_force": adaptive_now,
                       "objective": config.objective,
                       "lambda_per_1k_tokens": config.lambda_per_1k_tokens,
                       "min_feedback": config.min_feedback, "floor": config.floor},
        "leader": leaders[0] if len(leaders) == 1 else None,
    }


# Statuses that say nothing about the plan: the request was refused before it ran.
_NOT_RUN = frozenset({"401", "403", "429"})


def logged_decisions(records: Iterable[Record], *,
                     experiments: Mapping[str, ExperimentSettings] | None = None,
                     policies: Mapping[str, Policy] | None = None) -> list[LoggedDecision]:
    """The request log's rows as decisions to replay: requests that a policy planned, with the
    scores it read, the request's controls, the plan it ran and its propensity, the
    completion tokens spent and the outcome (correct from a feedback score of 0.5; a failed
    request counts as wrong). Rows without scores or a plan, or refused before they ran, are
    left out.

    The propensity is the logged one (the arm's share times the policy's probability; older
    rows: the policy's probability times the arm's configured share). When ``experiments``
    and ``policies`` (name or spec -> a frozen policy) name every logging policy of a row,
    its ``support`` (every plan any arm could pick for the prompt) is recomputed, and the
    other arms' share of the same plan is added to its propensity: the propensity is the
    probability of the plan, whichever arm picked it.
    """
    fields = set(Plan.__dataclass_fields__)
    experiments = experiments or {}
    policies = policies or {}
    out = []
    for record in records:
        if record.status in _NOT_RUN or not record.scores or not record.plan:
            continue
        if record.plan.get("policy") is None:
            continue
        try:
            scores = Scores.from_dict(record.scores)
            plan = Plan(**{k: v for k, v in record.plan.items() if k in fields})
            controls = _controls(record.plan.get("controls"))
        except (KeyError, TypeError, ValueError):
            continue
        config = experiments.get(record.experiment or "")
        if record.status != "200":
            correct: float | None = 0.0
        elif record.feedback_score is None:
            correct = None
        else:
            correct = float(is_correct(record.feedback_score))
        propensity = record.plan.get("propensity")
        if isinstance(propensity, (int, float)) and 0 < propensity <= 1:
            share = min(1.0, propensity / plan.probability) if plan.probability > 0 else 1.0
        else:
            share = 1.0
            if config is not None and record.arm in config.arms:
                share = configured_shares(config)[record.arm]
            propensity = share * plan.probability
        support = None
        loggers = _logging_policies(record, config, policies)
        if loggers is not None:
            support, others = _mixture(loggers, record.arm, share, scores, controls, plan)
            propensity = min(1.0, float(propensity) + others)
        out.append(LoggedDecision(scores, plan, float(propensity),
                                  float(record.completion_tokens), correct, controls, support))
    return out


def _controls(raw: Any) -> Controls:
    if not isinstance(raw, dict):
        return Controls()
    strategy = raw.get("strategy")
    budget = raw.get("budget_tokens")
    return Controls(None if strategy in (None, "auto") else str(strategy),
                    None if budget is None else int(budget))


def _logging_policies(record: Record, config: ExperimentSettings | None,
                      policies: Mapping[str, Policy]
                      ) -> list[tuple[str | None, float, Policy]] | None:
    """(arm, share, policy) of every policy that could have decided the row: each arm of its
    experiment with its configured share, or the row's own policy at share 1; None when one
    is unknown."""
    if config is None or record.arm not in config.arms:
        policy = policies.get(str(record.plan.get("policy") if record.plan else ""))
        return None if policy is None else [(None, 1.0, policy)]
    shares = configured_shares(config)
    out: list[tuple[str | None, float, Policy]] = []
    for arm, arm_settings in config.arms.items():
        policy = policies.get(arm_settings.policy)
        if policy is None:
            return None
        out.append((arm, shares[arm], policy))
    return out


def _mixture(loggers: list[tuple[str | None, float, Policy]], logged_arm: str | None,
             logged_share: float, scores: Scores, controls: Controls, plan: Plan
             ) -> tuple[frozenset[PlanKey], float]:
    """The plans the logging policies could pick for this prompt, and the probability that
    arms other than the logged one (which had ``logged_share`` of the traffic) give the
    logged plan: each arm's share times its policy's probability."""
    key = plan_key(plan)
    support: set[PlanKey] = set()
    others = 0.0
    rest = sum(share for arm, share, _ in loggers if arm != logged_arm)
    for arm, share, policy in loggers:
        try:
            dist = target_distribution(policy, scores, controls)
        except PolicyError:
            continue
        support.update(k for k, p in dist.items() if p > 0)
        if arm != logged_arm and rest > 0:
            # The other arms share what the logged arm did not have, by their weights.
            others += (1.0 - logged_share) * share / rest * dist.get(key, 0.0)
    support.add(key)
    return frozenset(support), others


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [interval[0], interval[1]]


class Experiments:
    """The configured experiments of one gateway and their current shares.

    Args:
        settings: ``experiments``, ``default_experiment``, ``experiment_refresh_s``.
        request_log: where adaptive allocation and reports read the arms' totals (None: the
            configured shares only, and no reports).
        rng: the random source for requests without an identity.
    """

    def __init__(self, settings: Settings, request_log: RequestLog | None = None,
                 rng: random.Random | None = None):
        self.configs = dict(settings.experiments)
        self.default = settings.default_experiment
        self.refresh_s = settings.experiment_refresh_s
        self.request_log = request_log
        self.rng = rng or random.Random()
        self.shares = {name: configured_shares(c) for name, c in self.configs.items()}
        self._policies = {name: {arm: a.policy for arm, a in c.arms.items()}
                          for name, c in self.configs.items()}
        self._feedback_since: dict[str, int] = dict.fromkeys(self.configs, 0)
        self._refreshed_s: dict[str, float] = dict.fromkeys(self.configs, 0.0)
        self._lock = asyncio.Lock()

    def config(self, name: str) -> ExperimentSettings:
        """The experiment's settings.

        Raises:
            InvalidRequest: no experiment has this name (400). The message names only the
                one asked for: the configured ones are the operator's, not every caller's
                (``ttc-router ab report`` lists them to the operator).
        """
        config = self.configs.get(name)
        if config is None:
            raise InvalidRequest(f"unknown experiment {name!r}", param="router.experiment",
                                 code="unknown_experiment")
        return config

    def experiment_for(self, routed: RoutedRequest) -> str | None:
        """The experiment the request joins (its own, else the default for ``model: "auto"``
        unless it names a policy or a strategy), or None.

        Raises:
            InvalidRequest: an unknown experiment, or both a policy and an experiment (400).
        """
        controls = routed.controls
        if controls.experiment is not None:
            if controls.policy is not None:
                raise InvalidRequest("name a policy or an experiment, not both",
                                     param="router.experiment")
            self.config(controls.experiment)
            return controls.experiment
        if controls.policy is None and controls.strategy == "auto" \
                and routed.model == AUTO_MODEL:
            # A request that names its strategy (``ttc-router eval``'s, for one) was planned
            # by no arm's policy: in an arm it would only blur the comparison. A request for a
            # backend model id passes through as its client sent it (INTERFACE.md: existing
            # clients see no change until they opt in), as ``default_policy`` leaves it too.
            return self.default
        return None

    async def assign(self, name: str, identity: str | None, how: str) -> Assignment:
        """Assign one request to an arm of ``name``; an adaptive experiment's shares are
        refreshed first when older than ``experiment_refresh_s``. The request counts in
        ``ttc_experiment_assignments_total`` when it is reported (``service.observe``): one
        refused before it ran (a key's token limit, a plan it cannot run) does not, as it
        is not in the request log the report reads either.

        Raises:
            InvalidRequest: no experiment has this name (400).
        """
        config = self.config(name)
        if config.adaptive and time.monotonic() - self._refreshed_s[name] > self.refresh_s:
            await self.refresh(name)
        assignment = assign(name, self.shares[name], identity, how=how,
                            policies=self._policies[name], rng=self.rng)
        return assignment

    async def refresh(self, name: str) -> dict[str, float]:
        """Re-read the arms' totals from the request log and recompute the shares (a failed
        read keeps the current shares and is logged)."""
        config = self.config(name)
        self._refreshed_s[name] = time.monotonic()
        self._feedback_since[name] = 0
        if self.request_log is None:
            return self.shares[name]
        async with self._lock:
            try:
                rows = await self.request_log.arm_totals(name)
            except StoreError as exc:
                log.warning("experiment %s: cannot read the arms' totals: %s", name, exc)
                return self.shares[name]
            self.shares[name], _ = current_shares(config, arm_totals(config, rows))
        return self.shares[name]

    async def feedback(self, applied: FeedbackApplied, correct: bool) -> None:
        """Count feedback on an experiment's request (``ttc_experiment_feedback_total``, at
        its first feedback) and refresh an adaptive experiment's shares every
        ``FEEDBACK_BETWEEN_REFRESHES`` feedbacks."""
        name = applied.experiment
        if name is None or applied.arm is None or name not in self.configs:
            return
        if applied.first:
            metrics.child(metrics.EXPERIMENT_FEEDBACK, name, applied.arm,
                          "correct" if correct else "incorrect").inc()
        if not self.configs[name].adaptive:
            return
        self._feedback_since[name] += 1
        if self._feedback_since[name] >= FEEDBACK_BETWEEN_REFRESHES:
            await self.refresh(name)

    async def report(self, name: str) -> dict[str, Any]:
        """``build_report`` over the request log's current totals.

        Raises:
            InvalidRequest: no experiment has this name (400).
            StoreError: there is no request log, or it failed.
        """
        config = self.config(name)
        if self.request_log is None:
            raise StoreError("experiment reports need the request log")
        return build_report(name, config, await self.request_log.arm_totals(name))
