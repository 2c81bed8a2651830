"""``learned``: compute-optimal plans from estimated P(correct | prompt, plan), learning online.

For each candidate plan c (strategy x width x depth x search calls) it estimates

    P(correct | x, c) = sigmoid(logit(prior_c(x)) + (w_strategy(c) + w_c) . z(x))

where ``prior_c`` is the structural prior below, z(x) = [1, difficulty, sequential, search,
one-hot kind of prompt, one-hot form of prompt (``features.FORMS``; none when unknown)] and
the weights start at 0. The form matters: prompts that read alike in the three scores (a
multiple-choice question and a numeric word problem, both hard and chain-like) can still
reward opposite axes, and only a cue from the text tells them apart. The weights have a
Gaussian (Laplace) posterior, updated one observation at a time by a Newton step and a
Sherman-Morrison update of the covariance: online Bayesian logistic regression
(Spiegelhalter and Lauritzen 1990; Chapelle and Li 2011, "An Empirical Evaluation of Thompson
Sampling", use its diagonal form).
Sharing ``w_strategy`` across a strategy's plans lets evidence on one budget move the others,
and the joint covariance keeps that sharing from being counted twice.

It picks the plan maximising expected accuracy - lambda x tokens, with lambda solved by
``router_models.budget.solve_lambda`` over a reference set of recent prompts so that the mean
budget meets ``target_tokens``. "Tokens" is a plan's expected spend: its budget until feedback
reports what plans actually spend (``update(..., spent_tokens=)``; a chain that finishes early
spends less than its budget), then the budget times the mean spent share for that kind of
prompt and plan (with a prior of two requests spending the whole budget). This is
compute-optimal allocation (Snell et al. 2024), with lambda found by bisection on a monotone
spend (Zhai et al. 2026). While exploring (``exploration`` > 0) it chooses by Thompson
sampling: the candidates' logits for the prompt are linear in the weights, so their posterior
is exactly Gaussian; ``thompson_draws`` draws from it each pick their best plan, and with
probability ``exploration`` it picks uniformly among the allowed candidates instead. The
chosen plan's probability under that mixture (the draws' shares, plus the uniform part) is
recorded in ``Plan.probability`` so other policies can be evaluated offline by inverse
propensity weighting. With ``exploration`` 0 it takes the posterior mean's best plan.

Budget curriculum: each kind of prompt's lambda is scaled by
``floor + (1 - floor) x n / (n + half)``, n being the feedback seen for that kind, so a kind
with little feedback gets generous budgets (explore what works) and its budget tightens toward
the least that keeps accuracy as evidence grows; ``budgets()`` reports the current figures.

The structural prior (a planning assumption of this package, not fitted to a paper): with
q = 1 - difficulty the chance a short answer (256 tokens) is right, a chain of L tokens
fixes a share ``sequential x (sat(L) - sat(256))`` of the failures, sat(L) = 1 - exp(-L / (128
+ 1024 x difficulty)), and below 256 tokens the answer may not fit: accuracy scales by
(1 - exp(-L / 64)) / (1 - exp(-256 / 64)); a majority vote of k such samples gains
``(1 - sequential)`` times the Condorcet-jury gain of independent voters; search recovers a
share ``search x (1 - 2^-calls)`` of the remaining failures.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from router_models import budget
from router_models.features import FORMS, Features
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies.base import (
    Candidate,
    Decision,
    Policy,
    PolicyError,
    check_strategy,
    fit_to_budget,
    plan_cost,
)

STATE_VERSION = 3  # 3 added the form columns to z(x); version 2 states are migrated
KIND_NAMES = tuple(f"{d}/{s}/{r}" for d in ("easy", "hard") for s in ("independent", "chain")
                   for r in ("closed", "search"))
FORM_OFFSET = 4 + len(KIND_NAMES)
N_CONTEXT = FORM_OFFSET + len(FORMS)
UNKNOWN_FORM = -1.0
SHORT_TOKENS = 256  # what "a small budget" means for the difficulty score
FINISH_TOKENS = 64.0  # the prior's scale for an answer's own length (see prior_accuracy)
SPEND_PRIOR_REQUESTS = 2.0  # pseudo-requests that spent their whole budget, per kind and plan


def default_candidates() -> list[Plan]:
    """The candidate grid: direct@128 and @256; votes of 3, 5, 8 x 256 and 3, 5 x 512
    tokens; chains of 512 to 4096 tokens; search with 1 or 3 calls and a 512- or 1024-token
    answer."""
    plans = [Plan("direct", d, depth_tokens=d) for d in (128, SHORT_TOKENS)]
    for depth, widths in ((256, (3, 5, 8)), (512, (3, 5))):
        plans += [Plan("parallel_vote", plan_cost("parallel_vote", w, depth), width=w,
                       depth_tokens=depth) for w in widths]
    plans += [Plan("sequential", d, depth_tokens=d) for d in (512, 1024, 2048, 4096)]
    plans += [Plan("search", plan_cost("search", 1, d, c), depth_tokens=d, search_calls=c)
              for d in (512, 1024) for c in (1, 3)]
    return plans


def kind_of(scores: Scores) -> int:
    """The kind of prompt (index into ``KIND_NAMES``): hard or easy, chain or independent,
    search or closed book, each at the score's 0.5 threshold."""
    return (4 * (scores.difficulty >= 0.5) + 2 * (scores.sequential >= 0.5)
            + (scores.search >= 0.5))


def score_row(scores: Scores) -> tuple[float, float, float, float]:
    """One prompt as the policy reads it: (difficulty, sequential, search, form index), the
    form index being its position in ``FORMS`` or ``UNKNOWN_FORM``."""
    form = FORMS.index(scores.form) if scores.form in FORMS else UNKNOWN_FORM
    return (scores.difficulty, scores.sequential, scores.search, float(form))


def kinds_of(rows: np.ndarray) -> np.ndarray:
    """``kind_of`` for a batch: (n, 3 or 4) rows -> (n,) kind indices."""
    return (4 * (rows[:, 0] >= 0.5) + 2 * (rows[:, 1] >= 0.5)
            + (rows[:, 2] >= 0.5)).astype(int)


def context(rows: np.ndarray) -> np.ndarray:
    """z(x) for a batch: (n, 4) ``score_row`` rows -> (n, N_CONTEXT); (n, 3) rows of scores
    alone read as of unknown form."""
    n = len(rows)
    kinds = kinds_of(rows)
    z = np.zeros((n, N_CONTEXT))
    z[:, 0] = 1.0
    z[:, 1:4] = rows[:, :3]
    z[np.arange(n), 4 + kinds] = 1.0
    if rows.shape[1] > 3:
        forms = rows[:, 3].astype(int)
        known = forms >= 0
        z[np.flatnonzero(known), FORM_OFFSET + forms[known]] = 1.0
    return z


@dataclasses.dataclass(frozen=True)
class _PlanArrays:
    """The plans' shapes as arrays, computed once per candidate grid: width, depth (tokens),
    search calls, whether a vote, and for the majority vote the exponents j and the weights
    C(width, j) x (1 if a majority, 1/2 if a tie, else 0) for j right votes (zero past the
    plan's width), each (C, max_width + 1)."""

    width: np.ndarray
    depth: np.ndarray
    calls: np.ndarray
    is_vote: np.ndarray
    right: np.ndarray
    wrong: np.ndarray
    weight: np.ndarray


@functools.lru_cache(maxsize=16)
def _plan_arrays(plans: tuple[Plan, ...]) -> _PlanArrays:
    width = np.array([p.width for p in plans], int)
    j = np.arange(width.max() + 1)[None, :]
    w = width[:, None]
    win = np.where(2 * j > w, 1.0, np.where(2 * j == w, 0.5, 0.0))
    comb = np.array([[math.comb(int(k), int(i)) if i <= k else 0 for i in j[0]]
                     for k in width], float)
    return _PlanArrays(
        width=width.astype(float),
        depth=np.array([p.depth_tokens or p.budget_tokens or SHORT_TOKENS for p in plans],
                       float),
        calls=np.array([p.search_calls for p in plans], float),
        is_vote=np.array([p.strategy == "parallel_vote" for p in plans]),
        right=np.broadcast_to(j, comb.shape).astype(float),
        wrong=np.maximum(w - j, 0).astype(float),
        weight=comb * win)


def _majority(p: np.ndarray, arrays: _PlanArrays) -> np.ndarray:
    """P(more than half of each plan's ``width`` independent voters are right, ties split
    evenly), each voter right with probability p: the Condorcet jury theorem's majority
    probability. (n, C) -> (n, C)."""
    q = p[:, :, None]
    return (q ** arrays.right * (1 - q) ** arrays.wrong * arrays.weight).sum(axis=2)


def prior_accuracy(scores: np.ndarray, plans: list[Plan]) -> np.ndarray:
    """The structural prior (module docstring): (n, 3) scores x plans -> (n, n_plans)."""
    d, s, r = (scores[:, i:i + 1] for i in range(3))
    arrays = _plan_arrays(tuple(plans))
    q = 1.0 - d
    need = 128.0 + 1024.0 * d
    gain = np.clip((1 - np.exp(-arrays.depth / need)) - (1 - np.exp(-SHORT_TOKENS / need)),
                   0, None)
    # Below SHORT_TOKENS an answer may be cut before it is written: scale by the chance it
    # fits, relative to SHORT_TOKENS.
    fits = np.minimum(1.0, (1 - np.exp(-arrays.depth / FINISH_TOKENS))
                      / (1 - np.exp(-SHORT_TOKENS / FINISH_TOKENS)))
    single = (q + (1 - q) * s * gain) * fits
    vote = single + (1 - s) * (_majority(single, arrays) - single)
    acc = np.where(arrays.is_vote, vote, single)
    acc = acc + (1 - acc) * r * (1 - 0.5 ** arrays.calls)
    return np.clip(acc, 0.01, 0.99)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


class LearnedPolicy(Policy):
    """Compute-optimal choice among candidate plans with online learning (module docstring).

    Args:
        target_tokens: the mean budget per request to meet (completion tokens).
        exploration: the uniformly spread share of the choice, in [0, 1); when positive,
            the rest follows Thompson sampling (module docstring).
        candidates: the plans to choose among (default ``default_candidates()``).
        prior_precision: the weight of the prior, as the initial diagonal precision.
        curriculum_floor, curriculum_half: the lambda scale of a kind with no feedback, and
            the feedback count at which it is half way to 1.
        reference_size: recent prompts kept to solve lambda over.
        resolve_every: re-solve lambda after this many new prompts or feedbacks.
        seed: seeds the policy's own random source.
        thompson_draws: posterior draws per decision while exploring (0: epsilon-greedy).

    Raises:
        PolicyError: exploration outside [0, 1) or a non-positive target.
    """

    name = "learned"

    def __init__(self, target_tokens: float = 1024.0, exploration: float = 0.05,
                 candidates: list[Plan] | None = None, prior_precision: float = 1.0,
                 curriculum_floor: float = 0.25, curriculum_half: float = 50.0,
                 reference_size: int = 512, resolve_every: int = 256, seed: int = 0,
                 thompson_draws: int = 64):
        if not 0.0 <= exploration < 1.0:
            raise PolicyError("exploration must be in [0, 1)")
        if target_tokens <= 0:
            raise PolicyError("target_tokens must be positive")
        self.target_tokens = float(target_tokens)
        self.exploration = float(exploration)
        self.thompson_draws = int(thompson_draws)
        self.candidates = list(candidates or default_candidates())
        self.costs = np.array([p.budget_tokens for p in self.candidates], float)
        self.strategy_index = np.array([STRATEGIES.index(p.strategy) for p in self.candidates])
        n = len(self.candidates)
        self.prior_precision = prior_precision
        # Parameter blocks of N_CONTEXT weights: one per strategy, then one per candidate.
        self.n_blocks = len(STRATEGIES) + n
        # Which blocks each candidate's weights sum: its strategy's and its own.
        self._design = np.zeros((n, self.n_blocks))
        self._design[np.arange(n), self.strategy_index] = 1.0
        self._design[np.arange(n), len(STRATEGIES) + np.arange(n)] += 1.0
        dim = self.n_blocks * N_CONTEXT
        self.theta = np.zeros(dim)
        self.cov = np.eye(dim) / prior_precision
        self.feedback = np.zeros(len(KIND_NAMES))
        self.spent_share_sum = np.zeros((len(KIND_NAMES), n))
        self.spent_count = np.zeros((len(KIND_NAMES), n))
        self.curriculum_floor, self.curriculum_half = curriculum_floor, curriculum_half
        # score_row()s of recent prompts.
        self.reference: deque[tuple[float, ...]] = deque(maxlen=reference_size)
        self.resolve_every = resolve_every
        self._since_solve = 0
        self.rng = random.Random(seed)
        self.allocation = budget.Allocation(0.0, 0.0, 1.0, 0.0)
        self.resolve()

    # -- estimates -------------------------------------------------------------------------

    def expected_accuracy(self, rows: np.ndarray) -> np.ndarray:
        """P(correct | prompt, plan): (n, 4) ``score_row`` rows (or (n, 3) scores) ->
        (n, n_candidates)."""
        rows = np.atleast_2d(np.asarray(rows, float))
        z = context(rows)
        blocks = self.theta.reshape(self.n_blocks, N_CONTEXT)
        weights = blocks[len(STRATEGIES):] + blocks[self.strategy_index]
        logits = _logit(prior_accuracy(rows[:, :3], self.candidates)) + z @ weights.T
        return 1.0 / (1.0 + np.exp(-logits))

    def expected_cost(self, kinds: np.ndarray) -> np.ndarray:
        """Expected tokens spent per candidate for prompts of these kinds: (n,) -> (n, C)."""
        share = (self.spent_share_sum[kinds] + SPEND_PRIOR_REQUESTS) / (
            self.spent_count[kinds] + SPEND_PRIOR_REQUESTS)
        return self.costs[None, :] * share

    def lambda_scale(self, kinds: np.ndarray) -> np.ndarray:
        """The curriculum's lambda multiplier per kind index (floor with no feedback -> 1)."""
        n = self.feedback[kinds]
        return self.curriculum_floor + (1 - self.curriculum_floor) * n / (
            n + self.curriculum_half)

    def add_reference(self, scores: Scores) -> None:
        """Remember a prompt for solving lambda (the oldest drops out past
        ``reference_size``); takes effect at the next ``resolve``."""
        self.reference.append(score_row(scores))

    def _reference_rows(self) -> np.ndarray:
        if self.reference:
            return np.array(self.reference, float)
        # No traffic yet: a grid over the score cube, of unknown form.
        grid = np.linspace(0.05, 0.95, 4)
        return np.array([(a, b, c, UNKNOWN_FORM) for a in grid for b in grid for c in grid])

    def resolve(self) -> budget.Allocation:
        """Re-solve lambda over the reference prompts so the mean budget meets the target."""
        scores = self._reference_rows()
        kinds = kinds_of(scores)
        self.allocation = budget.solve_lambda(
            self.expected_accuracy(scores), self.expected_cost(kinds), self.target_tokens,
            self.exploration,
            scale=self.lambda_scale(kinds))
        self._since_solve = 0
        return self.allocation

    def _tick(self) -> None:
        self._since_solve += 1
        if self._since_solve >= self.resolve_every:
            self.resolve()

    # -- deciding ---------------------------------------------------------------------------

    def _design_row(self, z: np.ndarray, i: int) -> np.ndarray:
        """Candidate i's (dim,) design row at context z: its weights are its strategy's block
        plus its own block, both times z."""
        phi = np.zeros((self.n_blocks, N_CONTEXT))
        phi[self.strategy_index[i]] = z
        phi[len(STRATEGIES) + i] += z
        return phi.reshape(-1)

    def _logit_covariance(self, z: np.ndarray) -> np.ndarray:
        """Phi cov Phi^T for the candidates' design rows at context z, (C, C), without
        building Phi: each row is z in two blocks (its strategy's and its own), so project
        the covariance onto z block by block first (n_blocks^2 x N_CONTEXT^2 work instead of
        C x dim^2)."""
        nb = self.n_blocks
        per_block = (self.cov.reshape(nb * N_CONTEXT, nb, N_CONTEXT) @ z).reshape(
            nb, N_CONTEXT, nb)
        block_cov = np.einsum("aib,i->ab", per_block, z)  # z^T cov[a, b] z
        return self._design @ block_cov @ self._design.T

    def distribution(self, scores: Scores, *, budget_tokens: int | None = None,
                     strategy: str | None = None, rng: random.Random | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, expected accuracies, allowed mask) over ``self.candidates`` for one
        prompt; the probabilities sum to 1 over the allowed candidates (all zeros when no
        candidate fits the controls).

        With ``rng`` and a positive exploration rate the probabilities are Thompson
        sampling's: ``thompson_draws`` draws of the candidates' logits from the posterior,
        each choosing its best plan, mixed with ``exploration`` spread uniformly; without, the
        posterior mean's choice with ``exploration`` spread uniformly (epsilon-greedy)."""
        row = np.array([score_row(scores)])
        acc = self.expected_accuracy(row)
        allowed = np.ones((1, len(self.candidates)), bool)
        if budget_tokens is not None:
            allowed &= self.costs[None, :] <= budget_tokens
        if strategy is not None:
            allowed &= np.array([p.strategy == strategy for p in self.candidates])[None, :]
        if not allowed.any():
            return np.zeros(len(self.candidates)), acc[0], allowed[0]
        kinds = np.array([kind_of(scores)])
        scale = self.lambda_scale(kinds)
        cost = self.expected_cost(kinds)
        a = self.allocation
        values = acc
        if rng is not None and self.exploration > 0 and self.thompson_draws > 0:
            # The candidates' logits are linear in the weights, so their posterior is the
            # exact Gaussian N(mean logits, Phi cov Phi^T): draw from it.
            logit_cov = self._logit_covariance(context(row)[0])
            chol = np.linalg.cholesky(logit_cov + 1e-9 * np.eye(len(logit_cov)))
            noise = np.random.default_rng(rng.getrandbits(64)).standard_normal(
                (self.thompson_draws, len(self.candidates)))
            values = 1.0 / (1.0 + np.exp(-(_logit(acc) + noise @ chol.T)))
        many = np.broadcast_to(allowed, values.shape)
        greedy_low = budget.choice_probabilities(values, cost, a.lam_low * scale, 0.0, many)
        greedy_high = budget.choice_probabilities(values, cost, a.lam_high * scale, 0.0, many)
        greedy = (a.mix * greedy_low + (1 - a.mix) * greedy_high).mean(axis=0)
        uniform = allowed[0] / allowed[0].sum()
        return (1 - self.exploration) * greedy + self.exploration * uniform, acc[0], allowed[0]

    def decide(self, scores: Scores, features: Features | None = None, *,
               budget_tokens: int | None = None, strategy: str | None = None,
               rng: random.Random | None = None) -> Decision:
        check_strategy(strategy)
        self.add_reference(scores)
        self._tick()
        rng = rng or self.rng
        probs, acc, allowed = self.distribution(scores, budget_tokens=budget_tokens,
                                                strategy=strategy, rng=rng)
        if not allowed.any():
            # No candidate fits the request's controls: the smallest plan of the strategy
            # (or a direct answer), shrunk to the cap.
            pool = [p for p in self.candidates if strategy in (None, p.strategy)]
            base = min(pool, key=lambda p: p.budget_tokens or 0) if pool else \
                Plan(strategy or "direct", budget_tokens)
            plan = dataclasses.replace(fit_to_budget(base, budget_tokens), policy=self.name,
                                       probability=1.0,
                                       reason="no candidate fits the request's controls")
            return Decision(plan, scores, (Candidate(plan, 1.0),))
        index = rng.choices(range(len(probs)), weights=probs.tolist())[0]
        greedy = int(np.argmax(probs))
        kind = KIND_NAMES[kind_of(scores)]
        reason = (f"max expected accuracy - lambda x tokens for {kind} "
                  f"(est. {acc[index]:.2f})" if index == greedy else
                  f"exploring (Thompson sampling, epsilon {self.exploration}) for {kind}")
        plan = dataclasses.replace(self.candidates[index], policy=self.name,
                                   probability=float(probs[index]), reason=reason)
        candidates = tuple(Candidate(c, float(p), float(a)) for c, p, a, ok in
                           zip(self.candidates, probs, acc, allowed, strict=True) if ok)
        return Decision(plan, scores, candidates)

    # -- learning ---------------------------------------------------------------------------

    def candidate_index(self, plan: Plan) -> int:
        """The candidate ``plan`` is (same strategy, width, depth and calls), else the same
        strategy's candidate nearest in budget (plans of other policies, capped plans)."""
        for i, c in enumerate(self.candidates):
            if (c.strategy, c.width, c.depth_tokens, c.search_calls) == (
                    plan.strategy, plan.width, plan.depth_tokens, plan.search_calls):
                return i
        pool = [i for i, c in enumerate(self.candidates) if c.strategy == plan.strategy] \
            or list(range(len(self.candidates)))
        spend = plan.budget_tokens or SHORT_TOKENS
        return min(pool, key=lambda i: abs(math.log((self.costs[i]) / spend)))

    def update(self, scores: Scores, plan: Plan, correct: bool | float,
               features: Features | None = None, spent_tokens: int | None = None) -> None:
        """One online Bayesian logistic-regression step on the plan's weights.

        ``correct``: True/False or a score in [0, 1]. ``spent_tokens``: the completion tokens
        the request actually spent, when known (updates the plan's expected spend). Plans not
        in the grid update their nearest candidate (``candidate_index``).

        Raises:
            ValueError: ``correct`` outside [0, 1].
        """
        y = float(correct)
        if not 0.0 <= y <= 1.0:
            raise ValueError("correct must be a bool or a score in [0, 1]")
        i = self.candidate_index(plan)
        row = np.array([score_row(scores)])
        z = context(row)[0]
        p = float(self.expected_accuracy(row)[0, i])
        phi = self._design_row(z, i)
        # Laplace step: precision += p(1-p) phi phi^T (Sherman-Morrison on the covariance),
        # then one Newton step on the mean.
        curvature = max(p * (1 - p), 1e-6)
        v = self.cov @ phi
        denom = 1.0 + curvature * float(phi @ v)
        self.cov -= np.outer(v, v) * (curvature / denom)
        self.theta += v * ((y - p) / denom)
        kind = kind_of(scores)
        self.feedback[kind] += 1
        if spent_tokens is not None and plan.budget_tokens:
            self.spent_share_sum[kind, i] += min(1.0, max(0, spent_tokens) / plan.budget_tokens)
            self.spent_count[kind, i] += 1
        self._tick()

    # -- reporting and state ----------------------------------------------------------------

    def budgets(self) -> dict[str, dict[str, float]]:
        """Per kind of prompt: feedback seen, the curriculum's lambda scale, and the mean
        expected tokens the current allocation gives that kind's reference prompts (NaN when
        none of them is of that kind)."""
        scores = self._reference_rows()
        kinds = kinds_of(scores)
        acc = self.expected_accuracy(scores)
        a = self.allocation
        scale = self.lambda_scale(kinds)
        cost = self.expected_cost(kinds)
        probs = (a.mix * budget.choice_probabilities(acc, cost, a.lam_low * scale,
                                                     self.exploration)
                 + (1 - a.mix) * budget.choice_probabilities(acc, cost, a.lam_high * scale,
                                                             self.exploration))
        spend = (probs * cost).sum(axis=1)
        out = {}
        for k, name in enumerate(KIND_NAMES):
            mask = kinds == k
            out[name] = {"feedback": float(self.feedback[k]),
                         "lambda_scale": float(self.lambda_scale(np.array([k]))[0]),
                         "mean_expected_tokens": float(spend[mask].mean()) if mask.any()
                         else float("nan")}
        return out

    def state(self) -> dict[str, Any]:
        """Everything needed to restore the policy, JSON-ready (plain lists and numbers)."""
        def r(a: np.ndarray) -> list[Any]:
            return np.round(a, 8).tolist()
        return {
            "state_version": STATE_VERSION,
            "config": {"target_tokens": self.target_tokens, "exploration": self.exploration,
                       "prior_precision": self.prior_precision,
                       "curriculum_floor": self.curriculum_floor,
                       "curriculum_half": self.curriculum_half,
                       "reference_size": self.reference.maxlen,
                       "resolve_every": self.resolve_every},
            "candidates": [{"strategy": p.strategy, "budget_tokens": p.budget_tokens,
                            "width": p.width, "depth_tokens": p.depth_tokens,
                            "search_calls": p.search_calls} for p in self.candidates],
            "theta": r(self.theta), "feedback": r(self.feedback),
            "spent_share_sum": r(self.spent_share_sum), "spent_count": r(self.spent_count),
            # The covariance is the prior's (identity / prior_precision) until feedback.
            "cov": r(self.cov) if self.feedback.sum() else None,
            "reference": [list(map(float, np.round(x, 6))) for x in self.reference],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], **overrides: Any) -> LearnedPolicy:
        """Restore from ``state()``; keyword overrides replace config values (for example
        ``target_tokens`` or ``exploration`` from the operator's config).

        A version 2 state (before the form columns) is migrated: its weights and covariance
        keep their values, the form weights start at the prior, and its reference prompts
        read as of unknown form.

        Raises:
            PolicyError: another state version or a malformed state.
        """
        if state.get("state_version") == 2:
            state = _migrate_v2(state)
        if state.get("state_version") != STATE_VERSION:
            raise PolicyError(f"learned policy state version {state.get('state_version')}; "
                              f"this code reads {STATE_VERSION} (and migrates 2)")
        try:
            config = dict(state["config"], **overrides)
            candidates = [Plan(**c) for c in state["candidates"]]
            policy = cls(candidates=candidates, **config)
            for name in ("theta", "feedback", "cov", "spent_share_sum", "spent_count"):
                if state.get(name) is None:
                    continue
                value = np.array(state[name], float)
                if value.shape != getattr(policy, name).shape:
                    raise PolicyError(f"learned policy state: {name} has shape {value.shape}")
                setattr(policy, name, value)
            policy.reference.extend(tuple(map(float, x)) for x in state["reference"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"malformed learned policy state: {exc}") from exc
        policy.resolve()
        return policy

    def save(self, path: Path) -> None:
        """Write ``state()`` as JSON (deterministic bytes)."""
        path.write_text(json.dumps(self.state(), indent=1, sort_keys=True) + "\n",
                        encoding="utf-8")

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> LearnedPolicy:
        """Read a state written by ``save`` (JSON only; never unpickles).

        Raises:
            PolicyError: unreadable or malformed file.
        """
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PolicyError(f"cannot read learned policy state {path}: {exc}") from exc
        return cls.from_state(state, **overrides)


def _migrate_v2(state: dict[str, Any]) -> dict[str, Any]:
    """A version 2 state (z(x) without the form columns) as version 3.

    Raises:
        PolicyError: a malformed version 2 state.
    """
    old_context = FORM_OFFSET  # version 2's z(x) ended where the form columns begin
    try:
        theta = np.array(state["theta"], float)
        n_blocks = theta.size // old_context
        if theta.size != n_blocks * old_context:
            raise ValueError(f"theta has {theta.size} values")
        new_theta = np.zeros((n_blocks, N_CONTEXT))
        new_theta[:, :old_context] = theta.reshape(n_blocks, old_context)
        migrated = dict(state, state_version=3, theta=new_theta.reshape(-1).tolist(),
                        reference=[list(map(float, x))[:3] + [UNKNOWN_FORM]
                                   for x in state["reference"]])
        if state.get("cov") is not None:
            cov = np.array(state["cov"], float).reshape(n_blocks, old_context, n_blocks,
                                                        old_context)
            precision = float(state["config"].get("prior_precision", 4.0))
            new_cov = np.zeros((n_blocks, N_CONTEXT, n_blocks, N_CONTEXT))
            new_cov[:, :old_context, :, :old_context] = cov
            for block in range(n_blocks):
                for column in range(old_context, N_CONTEXT):
                    new_cov[block, column, block, column] = 1.0 / precision
            dim = n_blocks * N_CONTEXT
            migrated["cov"] = new_cov.reshape(dim, dim).tolist()
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"malformed version 2 learned policy state: {exc}") from exc
    return migrated
