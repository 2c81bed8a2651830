"""SIMULATION: routing policies against every fixed strategy and the per-prompt oracle, on the
simulated reasoner (``router_models.simulation.World``), and learning from feedback.

Every accuracy printed here is simulated: it comes from the world model in
``router_models/data/sim_world.yaml`` (shapes from published findings, numbers illustrative),
not from a real model.

What it measures
    Prompts: the evaluation suites of ``router_models.tasks`` (real GSM8K, SVAMP, MultiArith,
    CommonsenseQA, StrategyQA, MMLU, HotpotQA questions and generated graph, arithmetic and
    multiple-choice tasks), up to ``--per-suite`` each. Each carries its simulated family and
    difficulty; the router sees only the question text, scored by the shipped classifier.
    Accuracy of a plan on a prompt is ``World.plan_accuracy`` (exact expectation; votes by the
    world's fixed-seed Monte Carlo) and its tokens ``World.plan_tokens`` (completion tokens
    actually spent: chains stop when done). A policy's figures are expectations under its
    choice probabilities, so nothing here is a lucky draw.

    1. Allocation at a target mean budget (``--target``, tokens): every fixed strategy swept
       over budgets (its accuracy interpolated at the policy's mean tokens), ``rules``,
       ``learned`` with the shipped prior and no feedback, ``learned`` after ``--feedback``
       requests of simulated feedback in this world, and the per-prompt oracle (the best plan
       per prompt in hindsight, lambda-solved to the same mean tokens). Targets: learned beats
       the best fixed strategy by >= 5 points at equal mean tokens, and reaches >= 90% of the
       oracle's gain over the cheapest strategy (``fixed:direct@256``).
    2. Learning from feedback: a world whose families are rebuilt so that each family's
       winning strategy is the opposite of the one the shipped prior picks for it (families
       the prior sends to chains become independent-guess families where a vote wins;
       families it sends to votes, direct answers or search become long compositional
       chains). ``learned`` (exploration ``--epsilon``) serves requests with Bernoulli
       feedback drawn from the world; the curve prints accuracy and, per family, the share
       of choices that left the prior's strategy and the gap to the best single plan at no
       more tokens (the compute-optimal switch may be to a cheap direct answer rather than
       to the family's most accurate strategy).

How to run it (from the repository root; needs ../shared/data for the real-data suites)
    .venv/bin/python bench/policy_sim.py [--per-suite 60] [--target 1024] [--feedback 4000]
        [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router_models import budget  # noqa: E402
from router_models.classifier import Classifier  # noqa: E402
from router_models.plan import STRATEGIES, Plan, Scores  # noqa: E402
from router_models.policies import (  # noqa: E402
    LearnedPolicy,
    RulesPolicy,
    fixed_plan,
    kind_of,
    parse_policy,
)
from router_models.simulation import World  # noqa: E402
from router_models.tasks import SUITES, SuiteUnavailable, load_suite  # noqa: E402

FIXED_BUDGETS = {
    "direct": (64, 128, 256, 512, 1024),
    "parallel_vote": (512, 768, 1024, 1536, 2048, 3072, 4096),
    "sequential": (128, 256, 512, 1024, 1536, 2048, 3072, 4096, 8192),
    "search": (256, 512, 768, 1024, 2048, 4096),
}
CHEAPEST = ("direct", 256)


@dataclass(frozen=True)
class Item:
    family: str
    difficulty: float
    scores: Scores


def _key(plan: Plan) -> tuple[Any, ...]:
    return (plan.strategy, plan.width, plan.depth_tokens, plan.budget_tokens, plan.search_calls)


class Oracle:
    """Cached world look-ups: (accuracy, tokens) of a plan on a (family, difficulty)."""

    def __init__(self, world: World):
        self.world = world
        self._cache: dict[tuple[Any, ...], tuple[float, float]] = {}

    def __call__(self, item: Item, plan: Plan) -> tuple[float, float]:
        key = (item.family, item.difficulty, _key(plan))
        if key not in self._cache:
            self._cache[key] = (
                self.world.plan_accuracy(item.family, item.difficulty, plan),
                float(self.world.plan_tokens(item.family, item.difficulty, plan)))
        return self._cache[key]


def load_items(per_suite: int, classifier: Classifier) -> list[Item]:
    items = []
    for suite in SUITES:
        try:
            tasks = load_suite(suite, limit=per_suite)
        except SuiteUnavailable as exc:
            print(f"  (skipping suite {suite}: {exc})", file=sys.stderr)
            continue
        for t in tasks:
            scores = classifier.score([{"role": "user", "content": t.question}])
            items.append(Item(t.family, round(float(t.difficulty), 3), scores))
    return items


def fixed_curve(items: list[Item], oracle: Oracle, strategy: str
                ) -> list[tuple[float, float, int]]:
    """(mean tokens, accuracy, budget) per budget of a fixed strategy, by mean tokens."""
    points = []
    for b in FIXED_BUDGETS[strategy]:
        plan = fixed_plan(strategy, b)
        acc, tok = zip(*(oracle(i, plan) for i in items), strict=True)
        points.append((float(np.mean(tok)), float(np.mean(acc)), b))
    return sorted(points)


def at_tokens(curve: list[tuple[float, float, int]], tokens: float) -> float | None:
    """A fixed strategy's accuracy at ``tokens`` mean tokens, linearly interpolated between
    its budgets; None outside the range it can spend."""
    xs = [p[0] for p in curve]
    if tokens < xs[0] - 1e-9 or tokens > xs[-1] + 1e-9:
        return None
    return float(np.interp(tokens, xs, [p[1] for p in curve]))


def policy_figures(items: list[Item], oracle: Oracle, policy: Any) -> tuple[float, float]:
    """Expected accuracy and mean tokens of a policy (under its choice probabilities)."""
    accs, toks = [], []
    for item in items:
        if isinstance(policy, LearnedPolicy):
            probs, _, _ = policy.distribution(item.scores)
            pairs = [(p, oracle(item, c)) for p, c in zip(probs, policy.candidates,
                                                          strict=True) if p > 0]
            accs.append(sum(p * a for p, (a, _) in pairs))
            toks.append(sum(p * t for p, (_, t) in pairs))
        else:
            a, t = oracle(item, policy.plan(item.scores))
            accs.append(a)
            toks.append(t)
    return float(np.mean(accs)), float(np.mean(toks))


def oracle_at(items: list[Item], oracle: Oracle, plans: list[Plan], tokens: float) -> float:
    """The per-prompt oracle: the best plan per prompt in hindsight, lambda-solved so its
    mean tokens equal ``tokens``."""
    return grouped_oracle(items, oracle, plans, list(range(len(items))), tokens)


def context_groups(items: list[Item]) -> dict[str, list[Any]]:
    """Groupings of the prompts by what a policy could know about them."""
    return {"kind (3 scores at 0.5)": [kind_of(i.scores) for i in items],
            "kind x form": [(kind_of(i.scores), i.scores.form) for i in items],
            "family (hidden from policies)": [i.family for i in items]}


def grouped_oracle(items: list[Item], oracle: Oracle, plans: list[Plan], groups: list[Any],
                   tokens: float) -> float:
    """Accuracy of the best plan per group in hindsight (one plan for all the prompts of a
    group), lambda-solved so the mean tokens equal ``tokens``: the ceiling of a policy that
    sees only the group."""
    acc = np.array([[oracle(i, p)[0] for p in plans] for i in items])
    tok = np.array([[oracle(i, p)[1] for p in plans] for i in items])
    index = {g: n for n, g in enumerate(dict.fromkeys(groups))}
    group = np.array([index[g] for g in groups])
    group_acc, group_tok = acc.copy(), tok.copy()
    for g in range(len(index)):
        rows = group == g
        group_acc[rows], group_tok[rows] = acc[rows].mean(axis=0), tok[rows].mean(axis=0)
    allocation = budget.solve_lambda(group_acc, group_tok, tokens)
    probs = sum(w * budget.choice_probabilities(group_acc, group_tok, lam) for w, lam in
                ((allocation.mix, allocation.lam_low), (1 - allocation.mix,
                                                        allocation.lam_high)))
    return float((probs * acc).sum(axis=1).mean())


def seed_reference(policy: LearnedPolicy, items: list[Item]) -> None:
    """Replace the policy's reference prompts with an even sample of ``items`` (every
    family, as many as the reference holds) and re-solve lambda."""
    policy.reference.clear()
    size = policy.reference.maxlen or len(items)
    for item in items[:: math.ceil(len(items) / size)]:
        policy.add_reference(item.scores)
    policy.resolve()


def all_plans(policy: LearnedPolicy) -> list[Plan]:
    plans = {_key(p): p for p in policy.candidates}
    for strategy, budgets in FIXED_BUDGETS.items():
        for b in budgets:
            p = fixed_plan(strategy, b)
            plans.setdefault(_key(p), p)
    return list(plans.values())


def simulate_feedback(items: list[Item], oracle: Oracle, policy: LearnedPolicy, n: int,
                      seed: int, report_every: int = 0, report: Any = None) -> None:
    """Serve ``n`` requests drawn from ``items`` with Bernoulli feedback from the world."""
    rng = random.Random(seed)
    for t in range(1, n + 1):
        item = items[rng.randrange(len(items))]
        plan = policy.decide(item.scores, rng=rng).plan
        accuracy, tokens = oracle(item, plan)
        policy.update(item.scores, plan, rng.random() < accuracy, spent_tokens=int(tokens))
        if report_every and t % report_every == 0:
            report(t)


def part_one(items: list[Item], world: World, args: argparse.Namespace, seed: int
             ) -> tuple[float, float]:
    """Prints part 1; returns the trained learned policy's (points over the best fixed
    strategy, share of the oracle's gain)."""
    oracle = Oracle(world)
    print(f"\n== 1. SIMULATION: allocation at a target mean budget of {args.target} tokens, "
          f"{len(items)} prompts, seed {seed} ==")
    print("families: " + ", ".join(f"{f} {n}" for f, n in sorted(
        Counter(i.family for i in items).items())))
    curves = {s: fixed_curve(items, oracle, s) for s in STRATEGIES}
    prior = parse_policy("learned", target_tokens=args.target, exploration=0.0)
    assert isinstance(prior, LearnedPolicy)
    seed_reference(prior, items)
    trained = copy.deepcopy(prior)
    trained.exploration = args.epsilon
    trained.resolve()  # as a deployment exploring at epsilon solves lambda
    simulate_feedback(items, oracle, trained, args.feedback, seed)
    trained.exploration = 0.0
    trained.resolve()
    rows = [("rules", RulesPolicy.from_yaml()), ("learned (shipped prior, no feedback)", prior),
            (f"learned (after {args.feedback} feedbacks)", trained)]
    cheap_acc, cheap_tok = policy_figures(items, oracle, parse_policy(
        f"fixed:{CHEAPEST[0]}@{CHEAPEST[1]}"))
    print(f"\ncheapest strategy fixed:{CHEAPEST[0]}@{CHEAPEST[1]}: accuracy "
          f"{cheap_acc:.3f}, {cheap_tok:.0f} tokens")
    print("\nfixed strategies (accuracy by budget; mean tokens actually spent):")
    for s, curve in curves.items():
        print(f"  {s:14} " + "  ".join(f"@{b}: {a:.3f}/{t:.0f}t" for t, a, b in curve))
    header = (f"\n| {'policy':40} | {'accuracy':>8} | {'mean tokens':>11} | "
              + " | ".join(f"{s:>13}" for s in STRATEGIES)
              + f" | {'oracle':>7} | {'vs best fixed':>13} | {'of oracle gain':>14} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.strip().split("|")[1:-1]) + "|")
    plans = all_plans(prior)
    for name, policy in rows:
        acc, tok = policy_figures(items, oracle, policy)
        fixed = {s: at_tokens(c, tok) for s, c in curves.items()}
        known = [v for v in fixed.values() if v is not None]
        best = max(known) if known else float("nan")
        oracle_acc = oracle_at(items, oracle, plans, tok)
        gain = (acc - cheap_acc) / (oracle_acc - cheap_acc) if oracle_acc > cheap_acc else 0
        cells = " | ".join(f"{v:>13.3f}" if v is not None else f"{'n/a':>13}"
                           for v in fixed.values())
        print(f"| {name:40} | {acc:>8.3f} | {tok:>11.0f} | {cells} | {oracle_acc:>7.3f} | "
              f"{100 * (acc - best):>+12.1f}p | {100 * gain:>13.0f}% |")
    print("(fixed columns: each strategy's accuracy at the policy's mean tokens, interpolated "
          "between budgets; n/a = it cannot spend that many)")
    print("\nceiling of what a policy can see (candidates only; the best plan per group in "
          f"hindsight, lambda-solved to {tok:.0f} mean tokens):")
    for label, groups in context_groups(items).items():
        ceiling = grouped_oracle(items, oracle, prior.candidates, groups, tok)
        share = (ceiling - cheap_acc) / (oracle_acc - cheap_acc)
        print(f"  {label:30} {ceiling:.3f}  ({100 * share:.0f}% of the oracle's gain)")
    # The last row is the trained learned policy: the two targets.
    print(f"targets for learned after feedback: >= +5.0 points over the best fixed strategy: "
          f"{100 * (acc - best):+.1f} ({'met' if acc - best >= 0.05 else 'MISSED'}); >= 90% of "
          f"the oracle's gain: {100 * gain:.0f}% ({'met' if gain >= 0.9 else 'MISSED'})")
    return acc - best, gain


def flipped_world(world_path: Path | None, items: list[Item], prior: LearnedPolicy
                  ) -> tuple[World, dict[str, str], dict[str, str]]:
    """A world where each family's winning strategy is the opposite of the prior's pick."""
    raw = yaml.safe_load(Path(world_path).read_text() if world_path else
                          (Path(__file__).resolve().parents[1] / "router_models" / "data"
                           / "sim_world.yaml").read_text())
    picks: dict[str, Counter[str]] = defaultdict(Counter)
    for item in items:
        probs, _, _ = prior.distribution(item.scores)
        picks[item.family][prior.candidates[int(np.argmax(probs))].strategy] += 1
    prior_pick = {f: c.most_common(1)[0][0] for f, c in picks.items()}
    independent = {"kind": "independent", "choices": 4, "peak_accuracy": [0.85, 0.45],
                   "rise_tokens": 40, "peak_tokens": 128, "fall_tokens": 300,
                   "max_chain_tokens": 4096, "wrong_zipf": 1.2}
    chain = {"kind": "compositional", "choices": 10, "steps": [8, 40], "tokens_per_step": 40,
             "step_accuracy": 0.995, "wrong_zipf": 1.0}
    families = {}
    for name in raw["families"]:
        families[name] = copy.deepcopy(independent if prior_pick.get(name) == "sequential"
                                       else chain)
    flipped = dict(raw, families=families)
    winner = {f: ("parallel_vote" if prior_pick.get(f) == "sequential" else "sequential")
              for f in families}
    return World.from_dict(flipped), prior_pick, winner


def part_two(items: list[Item], args: argparse.Namespace, seed: int) -> int:
    """Prints part 2; returns how many families end within 5 points of their best."""
    prior = parse_policy("learned", target_tokens=args.target, exploration=args.epsilon)
    assert isinstance(prior, LearnedPolicy)
    seed_reference(prior, items)
    world, prior_pick, winner = flipped_world(args.world, items, prior)
    oracle = Oracle(world)
    families = sorted({i.family for i in items})
    by_family = {f: [i for i in items if i.family == f] for f in families}
    plans = all_plans(prior)
    print(f"\n== 2. SIMULATION: learning from feedback in a flipped world (epsilon "
          f"{args.epsilon}, target {args.target} tokens, seed {seed}) ==")
    print("family: prior's pick -> what wins in this world (best single plan, its accuracy "
          "and tokens)")
    for f in families:
        scored = [(float(np.mean([oracle(i, p)[0] for i in by_family[f]])),
                   float(np.mean([oracle(i, p)[1] for i in by_family[f]])), p) for p in plans]
        a, t, p = max(scored, key=lambda x: (x[0], -x[1]))
        print(f"  {f:20} {prior_pick.get(f, '?'):>13} -> {winner[f]:13} (best "
              f"{p.strategy}@{p.budget_tokens}: {a:.3f}, {t:.0f} tokens)")

    def best_within(f: str, tokens: float) -> float:
        # The best single plan for family f spending no more tokens than the policy did there.
        feasible = [float(np.mean([oracle(i, p)[0] for i in by_family[f]])) for p in plans
                    if np.mean([oracle(i, p)[1] for i in by_family[f]]) <= tokens + 1e-9]
        return max(feasible) if feasible else float("nan")

    header = (f"\n| {'requests':>8} | {'accuracy':>8} | {'tokens':>6} | "
              + " | ".join(f"{f[:14]:>14}" for f in families) + " |")
    print("per family: share of choices that left the prior's strategy (switched) / gap to the "
          "best single plan at no more tokens (points)")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.strip().split("|")[1:-1]) + "|")

    last_gaps: list[float] = []

    def report(t: int) -> None:
        greedy = copy.deepcopy(prior)
        greedy.exploration = 0.0
        greedy.resolve()  # lambda for the greedy choice alone, so it spends the target
        acc, tok = policy_figures(items, oracle, greedy)
        cells = []
        last_gaps.clear()
        for f in families:
            f_acc, f_tok = policy_figures(by_family[f], oracle, greedy)
            share = np.mean([greedy.candidates[int(np.argmax(greedy.distribution(
                i.scores)[0]))].strategy != prior_pick.get(f) for i in by_family[f]])
            last_gaps.append(f_acc - best_within(f, f_tok))
            cells.append(f"{share:>5.0%} {100 * last_gaps[-1]:>+6.1f}p")
        print(f"| {t:>8} | {acc:>8.3f} | {tok:>6.0f} | " + " | ".join(f"{c:>14}" for c in cells)
              + " |", flush=True)

    report(0)
    simulate_feedback(items, oracle, prior, args.feedback, seed,
                      report_every=max(1, args.feedback // 8), report=report)
    within = sum(g >= -0.05 for g in last_gaps)
    print(f"target: every family within 5 points of its best single plan after "
          f"{args.feedback} feedbacks: {within} of {len(families)} "
          f"({'met' if within == len(families) else 'MISSED'})")
    return within


def main() -> int:
    parser = argparse.ArgumentParser(description="SIMULATION: routing policies on the "
                                                 "simulated reasoner")
    parser.add_argument("--per-suite", type=int, default=60)
    parser.add_argument("--target", type=float, default=1024.0)
    parser.add_argument("--feedback", type=int, default=4000)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                        help="comma-separated feedback seeds; single runs swing by several "
                             "points, so compare changes over several (default 0)")
    parser.add_argument("--world", type=Path, default=None, help="world YAML (default: shipped)")
    parser.add_argument("--part", choices=("1", "2", "both"), default="both")
    args = parser.parse_args()
    classifier = Classifier.load()
    items = load_items(args.per_suite, classifier)
    if not items:
        print("policy_sim: no suite could be loaded", file=sys.stderr)
        return 1
    world = World.load(args.world)
    print("SIMULATION: every accuracy below is from the simulated world "
          f"({args.world or 'router_models/data/sim_world.yaml'}), not a real model.")
    summary = []
    for seed in args.seeds:
        margin, gain = part_one(items, world, args, seed) if args.part in ("1", "both") \
            else (float("nan"), float("nan"))
        within = part_two(items, args, seed) if args.part in ("2", "both") else -1
        summary.append((seed, margin, gain, within))
    if len(summary) > 1:
        print("\n== SIMULATION: the issue's targets by seed ==")
        print("| seed | vs best fixed (>= +5.0) | of oracle gain (>= 90%) | families within 5 "
              "points (all 8) |")
        print("|---|---|---|---|")
        for seed, margin, gain, within in summary:
            print(f"| {seed} | {100 * margin:+.1f} | {100 * gain:.0f}% | {within} |")
        print(f"| mean | {100 * np.mean([m for _, m, _, _ in summary]):+.1f} | "
              f"{100 * np.mean([g for _, _, g, _ in summary]):.0f}% | "
              f"{np.mean([w for *_, w in summary]):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
