"""The statistics of an A/B experiment: per-arm intervals, the comparison of two arms, an
always-valid stopping rule, and Thompson-sampling allocation.

- Accuracy per arm: the Wilson score interval (Wilson 1927), from statsmodels'
  ``proportion_confint(method="wilson")``.
- Mean completion tokens per request: Student's t interval (scipy.stats.t).
- Difference in accuracy between two arms (treatment - control): Newcombe's hybrid score
  interval (Newcombe 1998, method 10, built from the arms' Wilson intervals), from statsmodels'
  ``confint_proportions_2indep(method="newcomb")``, and the two-sided pooled two-proportion
  z-test, statsmodels' ``proportions_ztest``. (statsmodels' Miettinen-Nurminen score interval
  fails to converge on small or extreme counts, so it is not used.) Valid for one look at a
  sample size fixed in advance.
- Stopping under repeated looks: a confidence sequence, an interval that covers the truth at
  every sample size at once with probability 1 - alpha, so an experiment may be looked at after
  every request and stopped when it excludes 0 without inflating false positives. Each arm's
  accuracy gets the two-sided normal-mixture boundary of Robbins (1970), in the form of Howard,
  Ramdas, McAuliffe and Sekhon (2021), "Time-uniform, nonparametric, nonasymptotic confidence
  sequences", Ann. Statist. 49(2): outcomes in [0, 1] are 1/2-sub-Gaussian, so with V = n/4,
  |sum(x - p)| <= sqrt((V + rho) log((V + rho) / (rho alpha^2))) for all n at once.
  The difference's sequence is the Minkowski difference of the two arms' sequences at alpha/2
  each (a union bound), which stays valid when allocation adapts to the data.
- Adaptive allocation: Thompson sampling (Thompson 1933) in its probability-matching form
  (Scott 2010, "A modern Bayesian look at the multi-armed bandit"): each arm's share is the
  posterior probability that it is the best on the objective, estimated by Monte Carlo from
  Beta(1 + correct, 1 + wrong) posteriors on accuracy (and, for ``accuracy - lambda x
  tokens``, a normal posterior on mean tokens), then mixed with a floor per arm.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

OBJECTIVES = ("accuracy", "accuracy_minus_tokens")


@dataclass(frozen=True)
class ArmTotals:
    """What the request log holds about one arm.

    Args:
        arm: the arm's name.
        requests: requests assigned to it.
        feedback: of those, requests with feedback.
        correct: of those, requests whose feedback counts as correct.
        tokens_sum: completion tokens summed over all its requests.
        tokens_sumsq: the sum of each request's completion tokens squared.
    """

    arm: str
    requests: int = 0
    feedback: int = 0
    correct: int = 0
    tokens_sum: float = 0.0
    tokens_sumsq: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """Correct / feedback, or None without feedback."""
        return self.correct / self.feedback if self.feedback else None

    @property
    def mean_tokens(self) -> float | None:
        """Mean completion tokens per request, or None without requests."""
        return self.tokens_sum / self.requests if self.requests else None

    @property
    def tokens_sd(self) -> float:
        """The sample standard deviation of completion tokens per request (0 below 2)."""
        n = self.requests
        if n < 2:
            return 0.0
        variance = (self.tokens_sumsq - self.tokens_sum ** 2 / n) / (n - 1)
        return math.sqrt(max(0.0, variance))


def wilson_interval(correct: int, n: int, alpha: float = 0.05) -> tuple[float, float] | None:
    """The Wilson score interval for ``correct`` of ``n`` (Wilson 1927), or None when n is 0."""
    if n <= 0:
        return None
    low, high = proportion_confint(correct, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def mean_interval(totals: ArmTotals, alpha: float = 0.05) -> tuple[float, float] | None:
    """Student's t interval for the mean completion tokens per request; None below 2
    requests. A constant sample gives a zero-width interval."""
    n = totals.requests
    mean = totals.mean_tokens
    if n < 2 or mean is None:
        return None
    sem = totals.tokens_sd / math.sqrt(n)
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(1 - alpha, n - 1, loc=mean, scale=sem)
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control in accuracy: the difference, its interval and the p-value of
    the two-sided score test of no difference (all for one look at the data)."""

    control: str
    treatment: str
    difference: float
    ci95: tuple[float, float]
    p_value: float


def compare_accuracy(control: ArmTotals, treatment: ArmTotals, alpha: float = 0.05
                     ) -> Comparison | None:
    """Treatment - control in accuracy, with Newcombe's interval and the pooled z-test's
    p-value (statsmodels; module docstring); None while either arm has no feedback."""
    if control.feedback == 0 or treatment.feedback == 0:
        return None
    low, high = confint_proportions_2indep(
        treatment.correct, treatment.feedback, control.correct, control.feedback,
        compare="diff", method="newcomb", alpha=alpha)
    correct = control.correct + treatment.correct
    if correct in (0, control.feedback + treatment.feedback):
        p_value = 1.0  # every answer right (or every one wrong) in both arms: no difference
    else:
        _, p = proportions_ztest([treatment.correct, control.correct],
                                 [treatment.feedback, control.feedback])
        p_value = float(p)
    difference = treatment.correct / treatment.feedback - control.correct / control.feedback
    return Comparison(control.arm, treatment.arm, difference, (float(low), float(high)),
                      p_value)


@functools.lru_cache(maxsize=64)
def mixture_rho(alpha: float, planned_n: int) -> float:
    """The normal-mixture precision rho that makes the boundary tightest at ``planned_n``
    outcomes, found numerically (scipy's bounded scalar minimiser); close to the
    approximation V / (2 log(1/alpha) + log(1 + 2 log(1/alpha))) with V = n / 4."""
    v = planned_n / 4.0

    def radius(log_rho: float) -> float:
        rho = math.exp(log_rho)
        return math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha ** 2)))

    best = optimize.minimize_scalar(radius, bounds=(-12.0, 20.0), method="bounded")
    return math.exp(float(best.x))


def mean_sequence(successes: float, n: int, alpha: float, planned_n: int = 1000
                  ) -> tuple[float, float]:
    """An always-valid (1 - alpha) confidence sequence for a mean of outcomes in [0, 1],
    evaluated after ``n`` outcomes summing to ``successes``: the two-sided normal-mixture
    boundary for 1/2-sub-Gaussian increments (Robbins 1970; Howard et al. 2021),
    clipped to [0, 1]. With n = 0 it is [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    rho = mixture_rho(alpha, planned_n)
    v = n / 4.0
    radius = math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha ** 2))) / n
    mean = successes / n
    return max(0.0, mean - radius), min(1.0, mean + radius)


@dataclass(frozen=True)
class Sequential:
    """The repeated-look stopping rule for treatment - control in accuracy: its always-valid
    interval, and the arm it names the winner (None until the interval excludes 0)."""

    control: str
    treatment: str
    ci95: tuple[float, float]
    winner: str | None

    @property
    def can_stop(self) -> bool:
        return self.winner is not None


def difference_sequence(control: ArmTotals, treatment: ArmTotals, alpha: float = 0.05,
                        planned_n: int = 1000) -> Sequential:
    """Treatment - control in accuracy as an always-valid confidence sequence (each arm's
    ``mean_sequence`` at alpha / 2, then their Minkowski difference). The experiment can stop
    when it excludes 0; the arm above is the winner."""
    c_low, c_high = mean_sequence(control.correct, control.feedback, alpha / 2, planned_n)
    t_low, t_high = mean_sequence(treatment.correct, treatment.feedback, alpha / 2, planned_n)
    low, high = t_low - c_high, t_high - c_low
    winner = treatment.arm if low > 0 else control.arm if high < 0 else None
    return Sequential(control.arm, treatment.arm, (low, high), winner)


def objective_draws(totals: ArmTotals, draws: int, rng: np.random.Generator, *,
                    objective: str, lambda_per_1k_tokens: float) -> np.ndarray:
    """Posterior draws of one arm's objective: accuracy from Beta(1 + correct, 1 + wrong);
    for ``accuracy_minus_tokens``, minus lambda x (mean tokens / 1000), the mean drawn from
    its normal (central limit) posterior.

    Raises:
        ValueError: an unknown objective.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    wrong = totals.feedback - totals.correct
    value = rng.beta(1 + totals.correct, 1 + wrong, size=draws)
    if objective == "accuracy_minus_tokens" and totals.requests:
        mean = totals.tokens_sum / totals.requests
        sem = totals.tokens_sd / math.sqrt(totals.requests)
        value = value - lambda_per_1k_tokens * rng.normal(mean, sem, size=draws) / 1000.0
    return value


def thompson_shares(arms: Sequence[ArmTotals], *, floor: float = 0.05,
                    objective: str = "accuracy", lambda_per_1k_tokens: float = 0.0,
                    draws: int = 20_000, seed: int | None = None) -> dict[str, float]:
    """Each arm's share of traffic: ``floor + (1 - k x floor) x P(arm is best)``, the
    probability estimated from ``draws`` joint posterior draws (Thompson 1933; Scott 2010).
    ``seed`` None seeds from the totals themselves, so replicas that read the same log
    compute the same shares.

    Raises:
        ValueError: no arms, a floor outside [0, 1/k], or an unknown objective.
    """
    k = len(arms)
    if k == 0:
        raise ValueError("no arms")
    if not 0.0 <= floor <= 1.0 / k:
        raise ValueError(f"floor must be in [0, 1/{k}]")
    if seed is None:
        seed = int.from_bytes(hashlib.blake2b(repr(list(arms)).encode(),
                                              digest_size=8).digest(), "big")
    rng = np.random.default_rng(seed)
    values = np.stack([objective_draws(a, draws, rng, objective=objective,
                                       lambda_per_1k_tokens=lambda_per_1k_tokens)
                       for a in arms])
    best = np.bincount(values.argmax(axis=0), minlength=k) / draws
    return {a.arm: float(floor + (1 - k * floor) * p) for a, p in zip(arms, best, strict=True)}
