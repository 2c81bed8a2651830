"""Compute-optimal budget allocation: choose a plan per prompt to maximise expected accuracy
minus lambda x tokens, with lambda solved so that the mean spend meets a target.

This is the Lagrangian relaxation of "maximise total expected accuracy subject to a mean token
budget" (compute-optimal test-time scaling, Snell et al. 2024: hard prompts get more, easy ones
less, the same total). The mean spend is non-increasing in lambda, so bisection finds it (as
in Zhai et al. 2026, "Adaptive Test-Time Compute Allocation via Constrained Policy
Optimization"). Because the spend is a step function of lambda, the solution mixes the two
lambdas either side of the step (choosing the cheaper with probability ``1 - mix``) so the
expected mean spend equals the target exactly, as the standard randomised Lagrangian solution
of a knapsack does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Allocation:
    """The solved trade-off: use ``lam_low`` with probability ``mix``, else ``lam_high``.

    ``lam_low <= lam_high`` (tokens per unit of accuracy: lambda is accuracy per token);
    ``spend`` is the expected mean tokens per prompt of the mixture; ``feasible`` is False when
    even the cheapest choices exceed the target (then ``lam_high`` picks the cheapest).
    """

    lam_low: float
    lam_high: float
    mix: float
    spend: float
    feasible: bool = True


def choice_probabilities(values: np.ndarray, costs: np.ndarray, lam: np.ndarray | float,
                         exploration: float = 0.0, allowed: np.ndarray | None = None
                         ) -> np.ndarray:
    """Per prompt, the probability of each candidate under an epsilon-greedy rule.

    Args:
        values: (n_prompts, n_candidates) expected accuracy in [0, 1].
        costs: (n_candidates,) or (n_prompts, n_candidates) tokens.
        lam: a float or (n_prompts,) lambdas (accuracy per token).
        exploration: epsilon; the greedy candidate gets 1 - epsilon + epsilon / n_allowed.
        allowed: optional (n_prompts, n_candidates) bool mask of candidates that may be chosen.

    Returns:
        (n_prompts, n_candidates) probabilities; each row sums to 1. Ties in the objective go
        to the cheaper candidate.

    Raises:
        ValueError: when a row allows no candidate.
    """
    values = np.atleast_2d(values)
    costs = np.broadcast_to(costs, values.shape)
    lam_col = np.asarray(lam, np.float64).reshape(-1, 1)
    objective = values - lam_col * costs
    if allowed is None:
        allowed = np.ones(values.shape, bool)
    if not allowed.any(axis=1).all():
        raise ValueError("a prompt has no allowed candidate")
    objective = np.where(allowed, objective, -np.inf)
    # Cheaper first among exact ties: subtract a vanishing multiple of the cost rank.
    best = np.argmax(objective - 1e-12 * costs, axis=1)
    n_allowed = allowed.sum(axis=1, keepdims=True)
    probs = np.where(allowed, exploration / n_allowed, 0.0)
    probs[np.arange(len(best)), best] += 1.0 - exploration
    return probs


def mean_spend(values: np.ndarray, costs: np.ndarray, lam: float, exploration: float = 0.0,
               scale: np.ndarray | None = None, allowed: np.ndarray | None = None) -> float:
    """Expected mean tokens per prompt at ``lam`` (each prompt's lambda is ``lam x scale``)."""
    lam_rows = lam * (np.ones(len(values)) if scale is None else scale)
    probs = choice_probabilities(values, costs, lam_rows, exploration, allowed)
    return float((probs * np.broadcast_to(costs, probs.shape)).sum(axis=1).mean())


def solve_lambda(values: np.ndarray, costs: np.ndarray, target_tokens: float,
                 exploration: float = 0.0, scale: np.ndarray | None = None,
                 allowed: np.ndarray | None = None, iterations: int = 50) -> Allocation:
    """The lambda whose mean spend over ``values``' prompts meets ``target_tokens``.

    Args:
        values: (n_prompts, n_candidates) expected accuracy of each candidate plan.
        costs: (n_candidates,) or (n_prompts, n_candidates) tokens of each candidate.
        target_tokens: the mean tokens per prompt to meet.
        exploration, scale, allowed: as in ``choice_probabilities`` and ``mean_spend``.
        iterations: bisection steps (50 narrow lambda to 1e-15 of its range).

    Returns:
        An ``Allocation`` whose mixture spends ``target_tokens`` on average exactly, unless the
        target is above the unconstrained spend (then lambda is 0 and spend is lower) or below
        the cheapest possible spend (then ``feasible`` is False).

    Raises:
        ValueError: empty ``values``, a non-positive target, or a prompt with no allowed
            candidate.
    """
    values = np.atleast_2d(np.asarray(values, np.float64))
    if values.size == 0:
        raise ValueError("no prompts to allocate over")
    if target_tokens <= 0:
        raise ValueError("target_tokens must be positive")
    costs = np.asarray(costs, np.float64)

    # The exploring share spends a constant; only the greedy choice moves with lambda.
    full_costs = np.broadcast_to(costs, values.shape)
    mask = np.ones(values.shape, bool) if allowed is None else allowed
    if not mask.any(axis=1).all():
        raise ValueError("a prompt has no allowed candidate")
    explore = float((np.where(mask, full_costs, 0.0).sum(axis=1) / mask.sum(axis=1)).mean())
    lam_unit = np.ones(len(values)) if scale is None else np.asarray(scale, np.float64)
    masked_values = np.where(mask, values, -np.inf) - 1e-12 * full_costs
    rows = np.arange(len(values))

    def spend(lam: float) -> float:
        best = np.argmax(masked_values - (lam * lam_unit)[:, None] * full_costs, axis=1)
        return (1 - exploration) * float(full_costs[rows, best].mean()) + exploration * explore

    free = spend(0.0)
    if free <= target_tokens:
        return Allocation(0.0, 0.0, 1.0, free)
    # Past this lambda one token costs more than the whole accuracy range: cheapest always.
    # Costs closer than one token count as one token apart: expected costs (budget x mean
    # spent share) differ by float noise (1e-13 tokens), and a gap that small would put `hi`
    # so high that bisection ran out of steps far above the answer.
    min_scale = float(np.min(scale)) if scale is not None else 1.0
    positive_gaps = np.diff(np.unique(costs))
    min_gap = max(1.0, float(positive_gaps.min())) if positive_gaps.size else 1.0
    hi = 2.0 / (min_gap * max(min_scale, 1e-6))
    cheapest = spend(hi)
    if cheapest > target_tokens:
        return Allocation(hi, hi, 0.0, cheapest, feasible=False)
    lo = 0.0
    spend_lo, spend_hi = free, cheapest
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        s = spend(mid)
        if s > target_tokens:
            lo, spend_lo = mid, s
        else:
            hi, spend_hi = mid, s
    mix = 0.0 if spend_lo == spend_hi else (target_tokens - spend_hi) / (spend_lo - spend_hi)
    mix = min(1.0, max(0.0, mix))
    return Allocation(lo, hi, mix, mix * spend_lo + (1 - mix) * spend_hi)
