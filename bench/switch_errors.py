"""How often the learned policy switches a kind of prompt when it should not, and how soon it
switches when it should (SIMULATION: Bernoulli outcomes, no model).

One kind of prompt (a hard compositional prompt: the prior gives it one chain) receives
decisions with feedback; each strategy answers correctly with a fixed probability. Where every
strategy ties, any switch is a false one (the improvement test's error); where one alternative
is better, the share of runs that switched to it is the test's power within that many
decisions; where every alternative is worse, a switch is a harmful one. Decisions include the
policy's own bounded exploration (5%), as in the gateway.

Usage: ``.venv/bin/python -m bench.switch_errors [--runs 200] [--decisions 200,1000]``
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence

from router_models.plan import Scores
from router_models.policies.learned import LearnedPolicy

HARD_CHAIN = Scores(0.8, 0.8, 0.1)  # kind hard/chain: the prior runs one chain
# Name -> (accuracy of every strategy, overrides): ties, alternatives worse than the chain (any
# switch is a harmful one), then a vote better than the chain.
WORLDS = {
    "all tie at 0.3": (0.3, {}),
    "all tie at 0.6": (0.6, {}),
    "the others 5 points worse (0.5 vs 0.45)": (0.45, {"sequential": 0.5}),
    "the others 10 points worse (0.5 vs 0.4)": (0.4, {"sequential": 0.5}),
    "vote +0.30 (0.7 vs 0.4)": (0.4, {"parallel_vote": 0.7}),
    "vote +0.15 (0.6 vs 0.45)": (0.45, {"parallel_vote": 0.6}),
}


def run(seed: int, accuracy: float, better: dict[str, float], decisions: int) -> LearnedPolicy:
    """One policy after ``decisions`` decisions on ``HARD_CHAIN``, each with its feedback."""
    policy = LearnedPolicy(seed=seed)
    rng = random.Random(seed)
    for _ in range(decisions):
        plan = policy.decide(HARD_CHAIN).plan
        policy.update(HARD_CHAIN, plan, rng.random() < better.get(plan.strategy, accuracy))
    return policy


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="independent runs per cell")
    parser.add_argument("--decisions", default="200,1000")
    args = parser.parse_args(argv)
    print("SIMULATION: Bernoulli outcomes per strategy, one kind of prompt")
    print("| world | decisions | runs that switched | runs that end on the vote |")
    print("| --- | ---: | ---: | ---: |")
    for name, (accuracy, better) in WORLDS.items():
        for decisions in (int(d) for d in args.decisions.split(",")):
            policies = [run(seed, accuracy, better, decisions) for seed in range(args.runs)]
            moved = sum(bool(p.switches) for p in policies) / args.runs
            on_vote = sum(p.switches[-1]["to"] == "parallel_vote"
                          for p in policies if p.switches) / args.runs
            print(f"| {name} | {decisions} | {100 * moved:.1f}% | {100 * on_vote:.1f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
