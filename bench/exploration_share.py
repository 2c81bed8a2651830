"""SIMULATION: how much of its exploration share ``LearnedPolicy`` spends, and what it learns.

A replay of the learned policy alone (no gateway, no backend) in a world like held-out traffic
seed 31's reversed part: four groups of prompts, each with its scores and a fixed accuracy per
strategy, where the chain group's best plan is a vote and the fact group's is not search. Each
run serves ``--rounds`` rounds of ``--per-group`` prompts per group in a shuffled order, posting
every outcome, and reports per run the share of decisions explored and where each group ended.

It compares the exploration rule that ships (``LearnedPolicy._exploration_rate``: a kind's
potential against the traffic-weighted mean of the kinds' current potentials) with the rule it
replaced on 7 Dec 2026 (against a running mean of past decisions' potentials), which left a
third of the share unspent::

    python -m bench.exploration_share --runs 60
"""

from __future__ import annotations

import argparse
import random
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import router_models.policies.learned as learned
from router_models.plan import Scores
from router_models.policies.learned import LearnedPolicy
from router_models.policies.prior import kind_of

# group -> (the classifier's reading of its prompts, accuracy per strategy). Guesses are
# answered best by one answer, chains by a vote, fact questions without the collection.
GROUPS: dict[str, tuple[Scores, dict[str, float]]] = {
    "guess": (Scores(0.6, 0.05, 0.05, form="choice"),
              {"direct": .85, "parallel_vote": .38, "sequential": .88, "search": .88}),
    "easy": (Scores(0.5, 0.1, 0.1, form="numeric"),
             {"direct": .68, "parallel_vote": .68, "sequential": .68, "search": .68}),
    "chain": (Scores(0.6, 0.9, 0.02, form="numeric", steps=5),
              {"direct": .45, "parallel_vote": .93, "sequential": .5, "search": .47}),
    "fact": (Scores(0.5, 0.1, 0.9, form="open"),
             {"direct": .8, "parallel_vote": .8, "sequential": .8, "search": .1}),
}
# The rule before 7 Dec: its running mean's start and weight per decision (the removed
# ``POTENTIAL_SMOOTHING``).
RUNNING_MEAN_START = 0.5
RUNNING_MEAN_SMOOTHING = 1 / 256


@dataclass(frozen=True)
class Run:
    """One replay: the share of decisions explored, and each group's strategy at the end."""

    share: float
    strategies: dict[str, str]


def running_mean_rule() -> Callable[[LearnedPolicy, int, Sequence[str]], float]:
    """The exploration rate before 7 Dec 2026: the share times the kind's potential over a
    running mean of past decisions' potentials (at most ``MAX_EXPLORATION_BOOST`` times)."""
    means: weakref.WeakKeyDictionary[LearnedPolicy, float] = weakref.WeakKeyDictionary()

    def rate(policy: LearnedPolicy, kind: int, alternatives: Sequence[str]) -> float:
        potential = policy.potential(kind, alternatives)
        mean = means.get(policy, RUNNING_MEAN_START)
        mean += RUNNING_MEAN_SMOOTHING * (potential - mean)
        means[policy] = mean
        if mean <= 0.0:
            return policy.exploration
        boost = min(learned.MAX_EXPLORATION_BOOST, potential / mean)
        return min(0.5, policy.exploration * boost)

    return rate


def replay(seed: int, rounds: int, per_group: int) -> Run:
    """Serve ``rounds`` x ``per_group`` prompts of every group to a fresh policy, posting every
    outcome (drawn from the group's accuracy for the strategy that ran)."""
    rng = random.Random(seed)
    policy = LearnedPolicy(seed=seed)
    for round_ in range(rounds):
        order = [g for g in GROUPS for _ in range(per_group)]
        rng.shuffle(order)
        for i, group in enumerate(order):
            scores, accuracy = GROUPS[group]
            plan = policy.decide(scores).plan
            policy.update(scores, plan, rng.random() < accuracy[plan.strategy],
                          prompt_key=f"{group}-{round_}-{i}")
    return Run(policy.explored / policy.decisions,
               {g: policy.current[kind_of(s)] for g, (s, _) in GROUPS.items()})


def report(label: str, runs: list[Run]) -> None:
    share = sum(r.share for r in runs) / len(runs)
    chain_votes = sum(r.strategies["chain"] == "parallel_vote" for r in runs)
    fact_moved = sum(r.strategies["fact"] != "search" for r in runs)
    print(f"{label}: {share:.2%} of decisions explored (share {LearnedPolicy().exploration:g});"
          f" chain group moved to votes in {chain_votes} of {len(runs)} runs, fact group off "
          f"search in {fact_moved}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="seeds 0..runs-1 (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    parser.add_argument("--per-group", type=int, default=60,
                        help="prompts per group and round (default 60)")
    args = parser.parse_args()
    print("SIMULATION: LearnedPolicy replayed alone against fixed accuracies per strategy.")
    report("shipped rule (traffic-weighted current potentials)",
           [replay(s, args.rounds, args.per_group) for s in range(args.runs)])
    shipped = LearnedPolicy._exploration_rate
    LearnedPolicy._exploration_rate = running_mean_rule()  # type: ignore[method-assign,assignment]
    try:
        report("rule before 7 Dec (running mean of past potentials)",
               [replay(s, args.rounds, args.per_group) for s in range(args.runs)])
    finally:
        LearnedPolicy._exploration_rate = shipped  # type: ignore[method-assign]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
