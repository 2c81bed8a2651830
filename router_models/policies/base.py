"""The policy interface: scores (and features) in, a ``Plan`` out, with the candidates it
weighed and the probability with which it chose.

Every policy implements ``decide``; ``plan`` is its plan alone, and ``update`` takes feedback
(a no-op for policies that do not learn). Request controls narrow a policy's choice: a forced
``strategy`` keeps only that strategy's plans, and ``budget_tokens`` is a cap no plan exceeds.
"""

from __future__ import annotations

import dataclasses
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from router_models.features import Features
from router_models.plan import Plan, Scores

# Completion tokens allowed for writing one search query (a planning assumption of this
# package, not a measured figure).
QUERY_TOKENS = 64


class PolicyError(ValueError):
    """An unknown policy name, a malformed spec, or an invalid rules file."""


@dataclass(frozen=True)
class Candidate:
    """One plan a policy considered: its probability of being chosen and, for policies that
    estimate it, its expected accuracy (None otherwise)."""

    plan: Plan
    probability: float
    expected_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": self.plan.strategy, "budget_tokens": self.plan.budget_tokens,
                "width": self.plan.width, "depth_tokens": self.plan.depth_tokens,
                "search_calls": self.plan.search_calls, "probability": self.probability,
                "expected_accuracy": self.expected_accuracy}


@dataclass(frozen=True)
class Decision:
    """What a policy decided for one request: the chosen plan (with ``policy``,
    ``probability`` and ``reason`` set), the scores it read, and every candidate it weighed
    (probabilities summing to 1)."""

    plan: Plan
    scores: Scores
    candidates: tuple[Candidate, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record for the request log."""
        return {"policy": self.plan.policy, "strategy": self.plan.strategy,
                "budget_tokens": self.plan.budget_tokens, "probability": self.plan.probability,
                "reason": self.plan.reason, "scores": self.scores.as_dict(),
                "candidates": [c.as_dict() for c in self.candidates]}


class Policy(ABC):
    """A routing policy. Subclasses set ``name`` and implement ``decide``."""

    name: str = "policy"

    @abstractmethod
    def decide(self, scores: Scores, features: Features | None = None, *,
               budget_tokens: int | None = None, strategy: str | None = None,
               rng: random.Random | None = None) -> Decision:
        """Choose a plan.

        Args:
            scores: the classifier's reading of the prompt.
            features: the prompt's features, for policies that use more than the scores.
            budget_tokens: the request's cap on completion tokens (never exceeded), or None.
            strategy: a strategy the request forces, or None.
            rng: the random source for exploring policies (default: the policy's own).

        Raises:
            PolicyError: ``strategy`` is not one of ``plan.STRATEGIES``.
        """

    def plan(self, scores: Scores, features: Features | None = None, **controls: Any) -> Plan:
        """The chosen plan alone (see ``decide``)."""
        return self.decide(scores, features, **controls).plan

    def update(self, scores: Scores, plan: Plan, correct: bool | float,
               features: Features | None = None, spent_tokens: int | None = None,
               prompt_key: str | None = None) -> None:
        """Learn from one outcome: ``correct`` is True/False or a score in [0, 1];
        ``spent_tokens`` the completion tokens the request spent, when known; ``prompt_key``
        what identifies the prompt (``router_models.prompt.prompt_key``), when known, so that
        a prompt asked again is not counted as new evidence. Policies that do not learn
        ignore it."""
        return None


def fit_to_budget(plan: Plan, budget_tokens: int | None) -> Plan:
    """``plan`` shrunk to fit a cap of ``budget_tokens`` (None: unchanged).

    The budget becomes the cap. A vote keeps as many samples as get at least 64 tokens each
    (at least one), sharing the cap evenly; a chain gets the whole cap; a search plan keeps at
    most one retrieval call per ``2 x QUERY_TOKENS`` of the cap, the rest for its answer.
    """
    if budget_tokens is None or (plan.budget_tokens is not None
                                 and plan.budget_tokens <= budget_tokens):
        return plan
    if plan.search_calls:
        calls = min(plan.search_calls, budget_tokens // (2 * QUERY_TOKENS))
        return dataclasses.replace(plan, budget_tokens=budget_tokens, search_calls=calls,
                                   depth_tokens=budget_tokens - QUERY_TOKENS * calls)
    width = max(1, min(plan.width, budget_tokens // 64))
    return dataclasses.replace(plan, budget_tokens=budget_tokens, width=width,
                               depth_tokens=budget_tokens // width)


def plan_cost(strategy: str, width: int, depth_tokens: int, search_calls: int = 0) -> int:
    """Completion tokens a plan may spend: ``width x depth_tokens`` plus ``QUERY_TOKENS`` per
    retrieval call (writing the query)."""
    return width * depth_tokens + QUERY_TOKENS * search_calls


def check_strategy(strategy: str | None) -> None:
    """Raise ``PolicyError`` unless ``strategy`` is None or a known strategy."""
    from router_models.plan import STRATEGIES
    if strategy is not None and strategy not in STRATEGIES:
        raise PolicyError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
