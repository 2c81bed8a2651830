"""``fixed:<strategy>@<budget_tokens>``: the same plan for every prompt (the baselines)."""

from __future__ import annotations

import dataclasses
import random

from router_models.features import Features
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies.base import (
    QUERY_TOKENS,
    Candidate,
    Decision,
    Policy,
    PolicyError,
    check_strategy,
    fit_to_budget,
)

# Tokens per vote sample when a fixed vote names only its total budget.
VOTE_SAMPLE_TOKENS = 256
MAX_VOTE_WIDTH = 8
SEARCH_CALLS = 3


def fixed_plan(strategy: str, budget_tokens: int) -> Plan:
    """The plan ``fixed:<strategy>@<budget_tokens>`` stands for.

    ``parallel_vote`` shares the budget over ``budget // 256`` samples (2 to 8);
    ``search`` makes up to 3 retrieval calls (fewer on small budgets) and answers with the
    rest; ``direct`` and ``sequential`` are one sample of the whole budget.

    Raises:
        PolicyError: unknown strategy or a budget below 1.
    """
    if strategy not in STRATEGIES:
        raise PolicyError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if budget_tokens < 1:
        raise PolicyError("budget_tokens must be at least 1")
    if strategy == "parallel_vote":
        width = max(2, min(MAX_VOTE_WIDTH, budget_tokens // VOTE_SAMPLE_TOKENS))
        return Plan(strategy, budget_tokens, width=width, depth_tokens=budget_tokens // width)
    if strategy == "search":
        calls = max(1, min(SEARCH_CALLS, budget_tokens // (4 * QUERY_TOKENS)))
        return Plan(strategy, budget_tokens, search_calls=calls,
                    depth_tokens=max(1, budget_tokens - QUERY_TOKENS * calls))
    return Plan(strategy, budget_tokens, depth_tokens=budget_tokens)


class FixedPolicy(Policy):
    """Always the same plan. Spec: ``fixed:<strategy>@<budget_tokens>``, e.g.
    ``fixed:parallel_vote@1024``."""

    def __init__(self, strategy: str, budget_tokens: int):
        self.base = fixed_plan(strategy, budget_tokens)
        self.name = f"fixed:{strategy}@{budget_tokens}"

    @classmethod
    def from_spec(cls, spec: str) -> FixedPolicy:
        """Parse ``fixed:<strategy>@<budget_tokens>``.

        Raises:
            PolicyError: the spec does not have that shape.
        """
        body = spec.removeprefix("fixed:")
        strategy, sep, budget = body.partition("@")
        if not spec.startswith("fixed:") or not sep or not budget.isdigit():
            raise PolicyError(f"bad policy spec {spec!r}: expected fixed:<strategy>@<tokens>, "
                              "e.g. fixed:parallel_vote@1024")
        return cls(strategy, int(budget))

    def decide(self, scores: Scores, features: Features | None = None, *,
               budget_tokens: int | None = None, strategy: str | None = None,
               rng: random.Random | None = None) -> Decision:
        check_strategy(strategy)
        plan = self.base
        reason = "fixed plan"
        if strategy is not None and strategy != plan.strategy:
            plan = fixed_plan(strategy, plan.budget_tokens or VOTE_SAMPLE_TOKENS)
            reason = f"strategy {strategy} forced by the request"
        plan = fit_to_budget(plan, budget_tokens)
        if plan.budget_tokens != self.base.budget_tokens:
            reason += f"; capped at {budget_tokens} tokens by the request"
        plan = dataclasses.replace(plan, policy=self.name, probability=1.0, reason=reason)
        return Decision(plan, scores, (Candidate(plan, 1.0),))


class RandomPolicy(Policy):
    """A uniformly random choice among fixed plans, each logged with probability 1 / n: the
    logging policy that makes off-policy evaluation of any of those plans unbiased (inverse
    propensity weighting needs every plan a target policy may pick to have been tried).
    Spec: ``random:<strategy>@<tokens>,<strategy>@<tokens>,...``, e.g.
    ``random:direct@256,parallel_vote@768,sequential@1024``.

    Raises:
        PolicyError: a malformed spec.
    """

    def __init__(self, plans: list[Plan], name: str, seed: int = 0):
        if not plans:
            raise PolicyError("a random policy needs at least one plan")
        self.plans, self.name = plans, name
        self.rng = random.Random(seed)

    @classmethod
    def from_spec(cls, spec: str) -> RandomPolicy:
        """Parse ``random:<strategy>@<tokens>,...``.

        Raises:
            PolicyError: the spec does not have that shape.
        """
        body = spec.removeprefix("random:")
        plans = []
        for part in body.split(","):
            strategy, sep, budget = part.strip().partition("@")
            if not spec.startswith("random:") or not sep or not budget.isdigit():
                raise PolicyError(f"bad policy spec {spec!r}: expected random:<strategy>@"
                                  "<tokens>,..., e.g. random:direct@256,sequential@1024")
            plans.append(fixed_plan(strategy, int(budget)))
        return cls(plans, spec)

    def decide(self, scores: Scores, features: Features | None = None, *,
               budget_tokens: int | None = None, strategy: str | None = None,
               rng: random.Random | None = None) -> Decision:
        check_strategy(strategy)
        pool = [p for p in self.plans if strategy in (None, p.strategy)] or [
            fixed_plan(str(strategy), self.plans[0].budget_tokens or VOTE_SAMPLE_TOKENS)]
        probability = 1.0 / len(pool)
        fitted = [fit_to_budget(p, budget_tokens) for p in pool]
        chosen = fitted[(rng or self.rng).randrange(len(pool))]
        candidates = tuple(Candidate(dataclasses.replace(
            p, policy=self.name, probability=probability), probability) for p in fitted)
        # Plans a cap made alike are one plan, drawn with their probabilities together.
        alike = sum(p.shape == chosen.shape for p in fitted)
        plan = dataclasses.replace(chosen, policy=self.name, probability=alike * probability,
                                   reason=f"uniformly random among {len(pool)} plans")
        return Decision(plan, scores, candidates)
