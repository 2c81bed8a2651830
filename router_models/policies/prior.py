"""The prior: what the test-time-compute literature says to do with each kind of prompt, before
any feedback, and how large each plan is.

Kinds of prompt (``KIND_NAMES``) are read off the classifier's scores: easy or hard
(``difficulty`` at 0.5), and of three archetypes: ``search`` (``search`` >= 0.5: facts the model
lacks), ``chain`` (``sequential`` >= 0.5: the answer builds on intermediate results), else
``independent`` (knowledge, estimation, judgement: each try is an independent guess).

The strategy per kind (``PRIOR_STRATEGY``):

- independent and hard: ``parallel_vote``. Majority voting over independent samples helps
  where each try is a guess (self-consistency, Wang et al. 2023; at equal tokens a vote of short
  chains beats one long chain by up to 20 points, Ghosal et al. 2025);
- chain and hard: ``sequential``. On compositional tasks one long chain is exponentially better
  than any vote over short ones (Mirtaheri et al. 2025, "Let Me Think!");
- search (easy or hard): ``search``. Reasoning tokens cannot supply a missing fact; retrieval
  can (the search axis of the issue; ReAct, Yao et al. 2023). Its answer is one chain sized
  like ``sequential``'s, so a chain-like prompt read as needing facts keeps its room;
- easy: ``direct`` with a small budget: extra compute buys little on easy prompts (Snell et
  al. 2024).

Sizes (``size_plan``) follow the tokens a complete answer of that kind takes, ``answer_tokens``
(observed: ``router_models.answer_lengths``), times ``HEADROOM``: a direct answer and each vote
sample get that much, so every sample can finish; a hard prompt gets an allotment of
``answer x HEADROOM x (1 + scale x difficulty)``, which buys a wider vote or a longer chain
cap, and ``scale`` is solved so the mean budget over recent traffic meets the operator's target
(``solve_scale``): harder prompts get more tokens within the configured mean (compute-optimal
allocation, Snell et al. 2024). A vote whose allotment buys fewer than two complete samples runs
one chain instead (``fit_vote``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from router_models.plan import Plan, Scores
from router_models.policies.base import QUERY_TOKENS

ARCHETYPES = ("independent", "chain", "search")
LEVELS = ("easy", "hard")
KIND_NAMES = tuple(f"{level}/{archetype}" for level in LEVELS for archetype in ARCHETYPES)
PRIOR_STRATEGY = {
    "easy/independent": "direct", "easy/chain": "direct", "easy/search": "search",
    "hard/independent": "parallel_vote", "hard/chain": "sequential", "hard/search": "search",
}
# A sample gets this multiple of the observed p90 answer length: room for the answer itself
# and for variation between samples.
HEADROOM = 1.25
# A chain's cap stops growing at this multiple of its sized answer: a chain ends when its
# answer is written, so budget beyond that is never spent and would only crowd out votes.
MAX_CHAIN_MULTIPLE = 3.0
MAX_SCALE = 32.0
# The search score above which a prompt outside the search archetype may still be offered
# search while exploring (a plausible plan, not a prior choice).
PLAUSIBLE_SEARCH = 0.25


def archetype_of(scores: Scores) -> str:
    """``search``, ``chain`` or ``independent`` (module docstring)."""
    if scores.search >= 0.5:
        return "search"
    if scores.sequential >= 0.5:
        return "chain"
    return "independent"


def kind_of(scores: Scores) -> int:
    """The kind of prompt: an index into ``KIND_NAMES``."""
    # On the request path: the archetype's index computed inline, not looked up.
    archetype = 2 if scores.search >= 0.5 else (1 if scores.sequential >= 0.5 else 0)
    return (3 if scores.difficulty >= 0.5 else 0) + archetype


def plausible_strategies(scores: Scores) -> tuple[str, ...]:
    """The strategies worth trying for this prompt: all but ``search`` unless the prompt may
    need facts (search score at least ``PLAUSIBLE_SEARCH``)."""
    if archetype_of(scores) == "search" or scores.search >= PLAUSIBLE_SEARCH:
        return ("direct", "parallel_vote", "sequential", "search")
    return ("direct", "parallel_vote", "sequential")


def sample_tokens(answer_tokens: int) -> int:
    """Tokens one sample gets: the answer length with ``HEADROOM``."""
    return max(1, math.ceil(answer_tokens * HEADROOM))


def size_plan(strategy: str, scores: Scores, answer_tokens: int, scale: float,
              vote_width: int = 8, search_calls: int = 3) -> Plan:
    """The plan of ``strategy`` for this prompt (module docstring).

    Args:
        strategy: one of ``plan.STRATEGIES``.
        scores: the prompt's scores (``difficulty`` sets the hard prompts' allotment).
        answer_tokens: tokens a complete answer of this kind takes (p90).
        scale: the allotment's multiplier of difficulty (``solve_scale``), >= 0.
        vote_width: the most samples of a vote.
        search_calls: the most retrieval calls of a hard prompt's search.

    Returns:
        A ``Plan`` with ``budget_tokens`` and ``depth_tokens`` set; a vote that cannot buy two
        complete samples comes back as one chain (``fit_vote``).
    """
    sample = sample_tokens(answer_tokens)
    hard = scores.difficulty >= 0.5
    allotment = sample * (1.0 + scale * scores.difficulty) if hard else float(sample)
    if strategy == "direct":
        return Plan("direct", sample, depth_tokens=sample)
    if strategy == "sequential":
        cap = max(sample, min(int(allotment), int(sample * MAX_CHAIN_MULTIPLE)))
        return Plan("sequential", cap, depth_tokens=cap)
    if strategy == "parallel_vote":
        width = max(1, min(vote_width, int(allotment // sample)))
        return fit_vote(Plan("parallel_vote", width * sample, width=width, depth_tokens=sample),
                        answer_tokens)
    if strategy == "search":
        # The first retrieval uses the question itself and costs no model tokens; each further
        # call costs the tokens of writing its query. The answer is one chain sized as
        # `sequential` would be: search is a chain with documents in its context, so a
        # chain-like prompt sent to search keeps the room for its steps.
        calls = 1 if not hard else max(1, min(search_calls,
                                              1 + int((allotment - sample) // QUERY_TOKENS)))
        depth = max(sample, min(int(allotment), int(sample * MAX_CHAIN_MULTIPLE)))
        return Plan("search", depth + QUERY_TOKENS * (calls - 1), depth_tokens=depth,
                    search_calls=calls)
    raise ValueError(f"unknown strategy {strategy!r}")


def fit_vote(plan: Plan, answer_tokens: int, budget_tokens: int | None = None) -> Plan:
    """A vote whose every sample can finish: samples of at least ``sample_tokens(answer)``
    tokens, as many as ``budget_tokens`` (default: the plan's budget) buys; with fewer than two,
    one chain of the whole budget, saying so in ``reason``. Other plans pass unchanged.

    Args:
        plan: any plan.
        answer_tokens: tokens a complete answer takes (p90) for this kind and model.
        budget_tokens: the total to fit in (None: ``plan.budget_tokens``, else the plan's
            width x depth).
    """
    if plan.strategy != "parallel_vote":
        return plan
    needed = sample_tokens(answer_tokens)
    total = budget_tokens or plan.budget_tokens or plan.width * max(plan.depth_tokens or 0,
                                                                      needed)
    depth = plan.depth_tokens or total // plan.width  # unset: the budget shared evenly
    if depth >= needed and plan.width * depth <= total:
        return plan if plan.budget_tokens == total else dataclasses.replace(
            plan, budget_tokens=total)
    depth = max(depth, needed)
    width = min(plan.width, total // depth)
    if width >= 2:
        return dataclasses.replace(plan, budget_tokens=total, width=width, depth_tokens=depth)
    why = (f"a vote needs samples of {depth} tokens to finish (answers take about "
           f"{answer_tokens}); {total} tokens buy one: ran one chain")
    return dataclasses.replace(plan, strategy="sequential", budget_tokens=total, width=1,
                               depth_tokens=total, search_calls=0,
                               reason=f"{plan.reason}; {why}" if plan.reason else why)


def fit_cap(plan: Plan, cap: int | None, answer_tokens: int) -> Plan:
    """``plan`` within a request's cap of ``cap`` completion tokens (None: unchanged): a vote
    keeps the samples that fit whole (``fit_vote``), a chain or direct answer gets at most the
    cap, a search keeps the retrieval calls the cap leaves room for."""
    if cap is None or (plan.budget_tokens is not None and plan.budget_tokens <= cap):
        return plan
    if plan.strategy == "parallel_vote":
        return fit_vote(plan, answer_tokens, cap)
    if plan.strategy == "search":
        depth = min(plan.depth_tokens or cap, cap)
        calls = max(1, min(plan.search_calls, 1 + (cap - depth) // QUERY_TOKENS))
        return dataclasses.replace(plan, budget_tokens=cap, depth_tokens=depth,
                                   search_calls=calls)
    return dataclasses.replace(plan, budget_tokens=cap, depth_tokens=cap)


def solve_scale(mean_budget: Callable[[float], float], target_tokens: float,
                iterations: int = 40) -> float:
    """The largest ``scale`` in [0, ``MAX_SCALE``] whose mean budget is at most
    ``target_tokens``, by bisection (the mean budget is non-decreasing in ``scale``).
    Returns 0 when even ``scale`` 0 spends more than the target."""
    if mean_budget(MAX_SCALE) <= target_tokens:
        return MAX_SCALE
    if mean_budget(0.0) > target_tokens:
        return 0.0
    lo, hi = 0.0, MAX_SCALE
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_budget(mid) <= target_tokens:
            lo = mid
        else:
            hi = mid
    return lo


def mean_budget(rows: Sequence[tuple[Scores, str, int]], scale: float, vote_width: int = 8,
                search_calls: int = 3) -> float:
    """The mean ``size_plan`` budget over ``rows`` of (scores, strategy, answer tokens) at
    ``scale``; vectorised, since ``solve_scale`` evaluates it some forty times per solve."""
    if not rows:
        return 0.0
    difficulty = np.array([r[0].difficulty for r in rows])
    sample = np.ceil(np.array([r[2] for r in rows], float) * HEADROOM)
    strategy = np.array([r[1] for r in rows])
    hard = difficulty >= 0.5
    allotment = np.where(hard, sample * (1.0 + scale * difficulty), sample)
    chain = np.maximum(sample, np.minimum(np.floor(allotment),
                                          np.floor(sample * MAX_CHAIN_MULTIPLE)))
    width = np.clip(np.floor(allotment / sample), 1, vote_width)
    calls = np.where(hard, np.clip(1 + np.floor((allotment - sample) / QUERY_TOKENS), 1,
                                   search_calls), 1)
    budget = np.select(
        [strategy == "direct", strategy == "sequential", strategy == "parallel_vote"],
        [sample, chain, width * sample], chain + QUERY_TOKENS * (calls - 1))
    return float(budget.mean())
