"""Off-policy replay: what another policy's accuracy and mean tokens would have been, estimated
from logged decisions, their propensities (the probability with which the logging policy chose
the logged plan) and their outcomes, without sending it any traffic.

Estimators, each with a 95% interval:

- IPS, inverse propensity scoring (Horvitz and Thompson 1952): the mean of w x r with
  w = target probability of the logged plan / its propensity; unbiased when every plan the
  target may pick had a positive propensity. Interval: Student's t on the terms.
- SNIPS, self-normalised IPS (Swaminathan and Joachims 2015): sum(w r) / sum(w); slightly
  biased, far less variable. Interval: percentile bootstrap (scipy.stats.bootstrap).
- DR, doubly robust (Dudik, Langford and Li 2011): a reward model's prediction for the
  target's plans plus the importance-weighted residual of the logged plan; unbiased when
  either the propensities or the model are right. The model (per plan, a logistic regression
  on the classifier's scores and the prompt's form for accuracy, a mean for tokens) is
  cross-fitted on two folds so no row is predicted by a model that saw it. Interval:
  Student's t on the terms.

Each interval is cut to the range its quantity can take ([0, 1] for accuracy, tokens from 0).

The propensity of a row in an A/B experiment is its arm's share times the arm policy's
probability of the plan (for arms whose plans overlap, the caller adds the other arms' share
of the same plan: the propensity is the probability of the plan, whichever arm picked it).
The target is asked through a frozen copy, with each row's logged controls (a forced strategy,
the request's cap), as the logging policy was. Failed requests count as wrong: dropping them
would favour plans that fail.

The effective sample size is Kish's (sum w)^2 / sum w^2. Positivity is checked per prompt:
the log cannot support an estimate when the target puts more than ``max_unsupported`` of its
probability on plans the logging policies could not have picked for that prompt (a row's
``support``, every arm included); for older rows without one, for a row logged with
propensity 1 (a deterministic policy), every plan but the logged one, and for an exploring
row, plans absent from the whole log. When an operator allows
some (``max_unsupported`` above 0), the rows that cannot support the target count as zero in
IPS, which is then biased down by about that share; SNIPS and DR renormalise over the rows
that can (right when which rows can is independent of the outcome, as with A/B arms).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression

from router_models.features import FORMS
from router_models.plan import Plan, Scores
from router_models.policies import Policy

PlanKey = tuple[str, int | None, int, int | None, int]


def plan_key(plan: Plan) -> PlanKey:
    """What makes two plans the same plan: strategy, budget, width, depth and search calls,
    as the policy chose them (``plan.decided`` when the gateway ran a fitted plan)."""
    return plan.decided if plan.decided is not None else plan.shape


def describe(key: PlanKey) -> str:
    """``strategy@budget`` (``xW`` for votes, ``+C search`` for retrieval calls)."""
    strategy, budget, width, _, calls = key
    text = f"{strategy}@{budget}"
    if width > 1:
        text += f" x{width}"
    if calls:
        text += f" +{calls} search"
    return text


@dataclass(frozen=True)
class Controls:
    """What a request asked of the policy that decided it: a forced strategy (None: the
    policy's choice) and its cap on completion tokens (None: no cap)."""

    strategy: str | None = None
    budget_tokens: int | None = None


@dataclass(frozen=True)
class LoggedDecision:
    """One logged request: the scores the policy read, the plan it ran, that plan's
    propensity in (0, 1] (in an A/B experiment, the arm's share times the policy's
    probability), the completion tokens spent and the outcome (1.0 correct, 0.0 wrong or
    failed; None without feedback).

    ``controls`` are the request's own, given to the target policy as they were to the
    logging one. ``support`` is every plan the logging policies (all arms, with their
    shares) could have picked for this prompt; None when unknown (older logs), in which case
    positivity falls back to the log as a whole for exploring rows.
    """

    scores: Scores
    plan: Plan
    propensity: float
    tokens: float
    correct: float | None = None
    controls: Controls = Controls()
    support: frozenset[PlanKey] | None = None


@dataclass(frozen=True)
class Estimate:
    """One estimator's value and 95% interval (same unit as the value)."""

    value: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class Replay:
    """The replay of one target policy over a log.

    ``accuracy`` and ``mean_tokens`` map ``ips``, ``snips`` and ``dr`` to estimates (empty
    when the log cannot support them, with ``reason`` saying why). ``ess`` is the effective
    sample size of the feedback rows' weights, ``unsupported`` the share of the target's
    probability on plans the log never explored, ``unexplored`` the most frequent of those.
    """

    policy: str
    rows: int
    feedback: int
    supported: bool
    unsupported: float
    ess: float
    accuracy: dict[str, Estimate] = field(default_factory=dict)
    mean_tokens: dict[str, Estimate] = field(default_factory=dict)
    unexplored: list[str] = field(default_factory=list)
    reason: str = ""
    target_plans: dict[str, float] = field(default_factory=dict)


def target_distribution(policy: Policy, scores: Scores,
                        controls: Controls = Controls()) -> dict[PlanKey, float]:
    """The policy's probability of each plan for these scores and the request's controls
    (``Policy.decide(...).candidates``; a deterministic policy has one plan at 1). Policies
    that explore draw from their own random source: pass a frozen copy (``freeze``)."""
    decision = policy.decide(scores, budget_tokens=controls.budget_tokens,
                             strategy=controls.strategy)
    out: dict[PlanKey, float] = defaultdict(float)
    for candidate in decision.candidates:
        if candidate.probability > 0:
            out[plan_key(candidate.plan)] += candidate.probability
    if not out:
        out[plan_key(decision.plan)] = 1.0
    return dict(out)


def freeze(policy: Policy) -> Policy:
    """A copy of ``policy`` that replay may ask as often as it likes: deciding draws from a
    policy's random source and may touch its state, and the live policy must not change."""
    return copy.deepcopy(policy)


def _t_interval(terms: np.ndarray) -> Estimate:
    mean = float(terms.mean())
    if len(terms) < 2 or float(terms.std(ddof=1)) == 0.0:
        return Estimate(mean, (mean, mean))
    low, high = stats.t.interval(0.95, len(terms) - 1, loc=mean, scale=stats.sem(terms))
    return Estimate(mean, (float(low), float(high)))


def _within(estimate: Estimate, low: float, high: float) -> Estimate:
    """``estimate`` with its interval cut to [low, high], the range the quantity can take.
    The t interval of importance-weighted terms is symmetric and ignores that range (terms of
    1 / 0.2 put an accuracy's upper end past 1); the true value lies inside the range, so
    cutting the interval there loses no coverage. The value itself is left as estimated: IPS
    past 1 says the weights are too few to trust."""
    lo, hi = estimate.ci95
    return Estimate(estimate.value, (min(max(lo, low), high), max(min(hi, high), low)))


def _snips(weights: np.ndarray, values: np.ndarray, seed: int) -> Estimate:
    value = float((weights * values).sum() / weights.sum())
    if len(values) < 2 or np.ptp(values) == 0:  # a constant outcome: the ratio is constant
        return Estimate(value, (value, value))

    def ratio(w: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        total = w.sum(axis=axis)
        return np.where(total > 0, (w * v).sum(axis=axis) / np.where(total > 0, total, 1), 0.0)

    result = stats.bootstrap((weights, values), ratio, paired=True, vectorized=True,
                             n_resamples=2000, method="percentile", confidence_level=0.95,
                             random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Estimate(value, (float(low), float(high)))


def _model(keys: list[PlanKey], x: np.ndarray, y: np.ndarray, binary: bool
           ) -> Callable[[PlanKey, np.ndarray], np.ndarray]:
    """A per-plan outcome model fitted on (keys, x, y): logistic regression on x (the scores
    and the form's one-hot) for a binary outcome when the plan has both outcomes at least 5
    times, else the plan's mean (Beta(1, 1)-smoothed for binary), else the overall mean."""
    overall = float(y.mean()) if len(y) else 0.0
    by_plan: dict[PlanKey, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_plan[key].append(i)
    fitted: dict[PlanKey, Callable[[np.ndarray], np.ndarray]] = {}
    for key, rows in by_plan.items():
        ys = y[rows]
        positives = int(ys.sum()) if binary else 0
        if binary and min(positives, len(ys) - positives) >= 5:
            fitted[key] = _logistic(LogisticRegression(C=1.0).fit(x[rows], ys.astype(int)))
        else:
            fitted[key] = _constant(float((ys.sum() + 1) / (len(ys) + 2)) if binary
                                    else float(ys.mean()))

    def predict(key: PlanKey, z: np.ndarray) -> np.ndarray:
        model = fitted.get(key)
        return model(z) if model is not None else np.full(len(z), overall)

    return predict


def _logistic(clf: LogisticRegression) -> Callable[[np.ndarray], np.ndarray]:
    return lambda z: clf.predict_proba(z)[:, 1]


def _constant(value: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda z: np.full(len(z), value)


def _dr_terms(keys: list[PlanKey], x: np.ndarray, y: np.ndarray, weights: np.ndarray,
              targets: list[dict[PlanKey, float]], binary: bool, seed: int) -> np.ndarray:
    """Doubly robust terms, cross-fitted on two folds (Dudik et al. 2011; Chernozhukov et al.
    2018 for cross-fitting)."""
    n = len(y)
    fold = np.random.default_rng(seed).permutation(n) % 2
    terms = np.empty(n)
    for f in (0, 1):
        train = np.flatnonzero(fold != f)
        test = np.flatnonzero(fold == f)
        if len(test) == 0:
            continue
        if len(train) == 0:
            train = test
        model = _model([keys[i] for i in train], x[train], y[train], binary)
        for i in test:
            row = x[i:i + 1]
            direct = sum(p * float(model(key, row)[0]) for key, p in targets[i].items())
            logged = float(model(keys[i], row)[0])
            terms[i] = direct + weights[i] * (y[i] - logged)
    return terms


def replay(decisions: Sequence[LoggedDecision], target: Policy, *,
           max_unsupported: float = 0.05, seed: int = 0) -> Replay:
    """Estimate ``target``'s accuracy and mean completion tokens per request from the log
    (module docstring: IPS, SNIPS and DR with 95% intervals, effective sample size, support).

    Args:
        decisions: logged decisions with scores; accuracy uses those with an outcome (failed
            requests count as wrong), tokens all.
        target: the policy to evaluate (a frozen copy's ``decide``, given each row's logged
            controls, gives its probabilities; ``target`` itself is never asked).
        max_unsupported: the most target probability allowed on unexplored plans.
        seed: for the bootstrap and the cross-fitting folds.

    Raises:
        ValueError: a propensity outside (0, 1].
    """
    name = getattr(target, "name", "policy")
    if not decisions:
        return Replay(name, 0, 0, False, 1.0, 0.0, reason="the log holds no decisions "
                      "with scores and a plan")
    if any(not 0.0 < d.propensity <= 1.0 for d in decisions):
        raise ValueError("every propensity must be in (0, 1]")
    logged_keys = [plan_key(d.plan) for d in decisions]
    explored = set(logged_keys)
    frozen = freeze(target)
    targets = [target_distribution(frozen, d.scores, d.controls) for d in decisions]
    unsupported = np.zeros(len(decisions))
    missing: dict[PlanKey, float] = defaultdict(float)
    plans: dict[PlanKey, float] = defaultdict(float)
    for i, (d, dist) in enumerate(zip(decisions, targets, strict=True)):
        deterministic = d.propensity >= 1.0 - 1e-9
        for key, p in dist.items():
            plans[key] += p / len(decisions)
            # Positivity per prompt: could the logging policies have picked this plan for
            # this prompt? Known when the support was logged or recomputed; else a
            # deterministic row supports its own plan only, an exploring row what the log
            # explored anywhere.
            if d.support is not None:
                covered = key in d.support
            else:
                covered = key == logged_keys[i] if deterministic else key in explored
            if not covered:
                unsupported[i] += p
                missing[key] += p
    weights = np.array([dist.get(key, 0.0) / d.propensity for d, dist, key in
                        zip(decisions, targets, logged_keys, strict=True)])
    share = float(unsupported.mean())
    unexplored = [describe(k) for k, _ in sorted(missing.items(), key=lambda kv: -kv[1])[:5]]
    has_feedback = np.array([d.correct is not None for d in decisions])
    fb_weights = weights[has_feedback]
    ess = float(fb_weights.sum() ** 2 / (fb_weights ** 2).sum()) if (fb_weights > 0).any() \
        else 0.0
    result = Replay(name, len(decisions), int(has_feedback.sum()), False, share, ess,
                    unexplored=unexplored,
                    target_plans={describe(k): round(v, 4) for k, v in
                                  sorted(plans.items(), key=lambda kv: -kv[1])})
    if share > max_unsupported:
        return _with(result, reason=(
            f"the log cannot support an estimate: {share:.0%} of the target's choices are "
            f"plans the log never explored ({', '.join(unexplored)})"))
    if weights.sum() == 0:
        return _with(result, reason="no logged plan is one the target would pick")
    # The outcome model reads what the learned policy reads: the scores and the form.
    x = np.array([[d.scores.difficulty, d.scores.sequential, d.scores.search]
                  + [float(d.scores.form == form) for form in FORMS] for d in decisions])
    tokens = np.array([float(d.tokens) for d in decisions])
    mean_tokens = {
        "ips": _t_interval(weights * tokens),
        "snips": _snips(weights, tokens, seed),
        "dr": _t_interval(_dr_terms(logged_keys, x, tokens, weights, targets, False, seed)),
    }
    mean_tokens = {k: _within(e, 0.0, np.inf) for k, e in mean_tokens.items()}
    accuracy: dict[str, Estimate] = {}
    if has_feedback.sum() >= 2 and fb_weights.sum() > 0:
        idx = [int(i) for i in np.flatnonzero(has_feedback)]
        y = np.array([float(decisions[i].correct or 0.0) for i in idx])
        keys = [logged_keys[i] for i in idx]
        accuracy = {
            "ips": _t_interval(fb_weights * y),
            "snips": _snips(fb_weights, y, seed),
            "dr": _t_interval(_dr_terms(keys, x[idx], y, fb_weights,
                                        [targets[i] for i in idx], True, seed)),
        }
        accuracy = {k: _within(e, 0.0, 1.0) for k, e in accuracy.items()}
    reason = "" if accuracy else "too little feedback on the plans the target picks"
    return _with(result, supported=True, accuracy=accuracy, mean_tokens=mean_tokens,
                 reason=reason)


def _with(result: Replay, **changes: Any) -> Replay:
    return dataclasses.replace(result, **changes)
