"""SIMULATION: routing policies on 100 randomized worlds (domain randomization), the
evaluation of issue 13 that cannot be tuned to. It replaces the earlier bench on the one
hand-written world (``router_models/data/sim_world.yaml``, which ``ttc-router sim`` still
serves), whose figures the policy could be, and was, tuned to.

Every figure printed is SIMULATED: the worlds come from ``router_models.worlds`` (per kind of
prompt, the axis it rewards, its accuracy curves, its answer lengths and its phrasing drawn
from wide ranges; literature-following, reversed and flat worlds), not from a real model. The
prompts' text goes through the real classifier; policies are used only through
``Policy.decide`` and ``Policy.update`` (``router_models.world_eval``).

Seeds: tune on seeds below 1000 (``--seeds tune``); report on seeds at or above 1000
(``--seeds report``, the default), drawn at random when the report runs and printed, so that
the report's worlds are not known in advance. ``--seeds 1000,1001`` names them.

Per world and policy it prints (a) the policy with no feedback minus the best fixed strategy
at equal mean tokens (each fixed strategy given the budget that makes it spend what the
policy spent), with the token ratio; and (b) after ``--feedback`` feedbacks per kind of
prompt, on-policy, the policy's share of the per-kind oracle's gain over the best fixed
strategy on held-out prompts, and the ceiling a policy that reads only the classifier's scores
and form could reach (the best plan per group of prompts it tells apart, as a share of the same
gain: below 100%, the classifier hides what pays). Then per world type the median, 10th
percentile and worst, and the issue's three targets, met or not.

How to run it (from the repository root; about 1.5 s of CPU per world)
    .venv/bin/python bench/policy_sim.py [--worlds 100] [--seeds report|tune|LIST]
        [--feedback 100] [--held-out 400] [--policies learned,rules] [--explain]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router_models.classifier import Classifier  # noqa: E402
from router_models.policies import LearnedPolicy  # noqa: E402
from router_models.world_eval import (  # noqa: E402
    WorldResult,
    evaluate_policy,
    pick_seeds,
    policy_factory,
    set_up_world,
)
from router_models.worlds import KINDS, WORLD_TYPES  # noqa: E402

AXIS_CODE = {"votes": "V", "chain": "C", "search": "S", "nothing": "-"}


def axes_code(result: WorldResult) -> str:
    return "".join(AXIS_CODE[result.axes[k]] for k in KINDS)


def points(x: float) -> str:
    return f"{100 * x:+.1f}"


def share_text(r: WorldResult) -> str:
    return "n/a" if r.share is None else f"{100 * r.share:.0f}%"


def summary(values: list[float]) -> tuple[float, float, float]:
    """(median, 10th percentile, worst) of ``values``."""
    a = np.array(values, float)
    return float(np.median(a)), float(np.percentile(a, 10)), float(a.min())


def print_world_rows(results: dict[str, list[WorldResult]]) -> None:
    names = list(results)
    print("\n== SIMULATION: per world (axes: guess/chain/easy/fact, V votes, C chain, S search, "
          "- nothing) ==")
    header = "| seed | type | axes | oracle headroom | " + " | ".join(
        f"{n}: vs best fixed (tokens x) | {n}: share after feedback" for n in names) + " |"
    print(header)
    print("|" + "---|" * (4 + 2 * len(names)))
    for rows in zip(*results.values(), strict=True):
        first = rows[0]
        cells = []
        for r in rows:
            cells.append(f"{points(r.margin)} ({r.fixed.strategy}, {r.token_ratio:.2f}x)")
            ceiling = ("" if r.observable_share is None
                       else f"; scores' ceiling {100 * r.observable_share:.0f}%")
            cells.append(f"{share_text(r)} ({points(r.trained_accuracy - r.trained_fixed.accuracy)}"
                         f" of {points(r.oracle_gain)}{ceiling})")
        print(f"| {first.seed} | {first.world_type} | {axes_code(first)} | "
              f"{points(first.oracle - first.fixed.accuracy)} | " + " | ".join(cells) + " |")


def print_explanations(results: dict[str, list[WorldResult]]) -> None:
    print("\n== SIMULATION: per world and kind of prompt (accuracy/tokens, strategy shares; "
          "the oracle's plan for the kind after feedback) ==")
    for rows in zip(*results.values(), strict=True):
        first = rows[0]
        print(f"seed {first.seed} ({first.world_type}, axes {axes_code(first)}):")
        for r in rows:
            for kind, k in r.per_kind.items():
                scores = " ".join(f"{h[:3]} {v:.2f}" for h, v in k["scores"].items())
                forms = ",".join(f"{f} {n}" for f, n in sorted(k["forms"].items()))

                def mix(f: dict[str, Any]) -> str:
                    shares = " ".join(f"{s} {100 * w:.0f}%" for s, w in sorted(
                        f["strategies"].items(), key=lambda x: -x[1]))
                    return f"{f['accuracy']:.2f}/{f['tokens']:.0f}t [{shares}]"

                print(f"  {r.policy:8} {kind:5} ({k['axis']}, {k['prompts']} prompts, {scores}; "
                      f"{forms}): before {mix(k['before'])} -> after {mix(k['after'])}; oracle "
                      f"{k.get('oracle_plan', '-')} {k.get('oracle_accuracy', float('nan')):.2f}/"
                      f"{k.get('oracle_tokens', float('nan')):.0f}t")


def print_summary(name: str, rows: list[WorldResult], feedback: int) -> dict[str, Any]:
    print(f"\n== SIMULATION: {name}, summary by world type ({len(rows)} worlds) ==")
    print("| world type | worlds | (a) vs best fixed, points: median / p10 / worst | "
          "(a) tokens x: median / worst | (b) share of oracle gain: median / p10 / worst | "
          "(b) met | scores' ceiling: median share |")
    print("|---|---|---|---|---|---|---|")
    out: dict[str, Any] = {}
    for world_type in (*WORLD_TYPES, "all"):
        group = [r for r in rows if world_type in ("all", r.world_type)]
        if not group:
            continue
        med, p10, worst = summary([r.margin for r in group])
        ratios = [r.token_ratio for r in group]
        shares = [r.share for r in group if r.share is not None]
        s_med, s_p10, s_worst = summary(shares) if shares else (float("nan"),) * 3
        share_cell = (f"{100 * s_med:.0f}% / {100 * s_p10:.0f}% / {100 * s_worst:.0f}%"
                      if shares else "n/a (no gain to take)")
        met = sum(r.share_met for r in group)
        ceilings = [r.observable_share for r in group if r.observable_share is not None]
        ceiling = f"{100 * np.median(ceilings):.0f}%" if ceilings else "n/a"
        print(f"| {world_type} | {len(group)} | {100 * med:+.1f} / {100 * p10:+.1f} / "
              f"{100 * worst:+.1f} | {np.median(ratios):.2f} / {max(ratios):.2f} | "
              f"{share_cell} ({len(shares)} with gain) | {met}/{len(group)} | {ceiling} |")
        out[world_type] = {"worlds": len(group), "margin_median": med, "margin_p10": p10,
                           "margin_worst": worst, "share_median": s_med, "share_p10": s_p10,
                           "share_worst": s_worst, "share_met": met}
    literature = [r for r in rows if r.world_type == "literature"]
    t1 = sum(r.margin >= 0.03 and r.token_ratio <= 1.1 for r in literature)
    t1_ok = bool(literature) and t1 >= 0.8 * len(literature)
    worst = min(rows, key=lambda r: r.margin)
    t2_ok = worst.margin >= -0.02
    t3 = sum(r.share_met for r in rows)
    t3_ok = t3 >= 0.9 * len(rows)
    verdict = {True: "met", False: "NOT MET"}
    print(f"\ntargets for {name} (SIMULATION):")
    print(f"  1. no feedback, >= +3 points over the best fixed strategy at <= 1.1x its tokens "
          f"in 80% of literature worlds: {t1}/{len(literature)} -> {verdict[t1_ok]}")
    print(f"  2. in no world more than 2 points below the best fixed strategy: worst "
          f"{points(worst.margin)} (seed {worst.seed}, {worst.world_type}) -> {verdict[t2_ok]}")
    print(f"  3. after {feedback} feedbacks per kind, >= 90% of the per-kind oracle's gain in "
          f"90% of worlds: {t3}/{len(rows)} -> {verdict[t3_ok]}")
    out["targets"] = {"1": [t1, len(literature), t1_ok], "2": [worst.margin, t2_ok],
                      "3": [t3, len(rows), t3_ok]}
    return out


def learned_options(pairs: list[str]) -> dict[str, float | int]:
    """``--learned NAME=VALUE`` pairs as keyword settings of ``LearnedPolicy`` (an int when
    the value is written as one, else a float).

    Raises:
        ValueError: a pair without ``=``, a name ``LearnedPolicy`` does not take, or a value
            that is not a number.
    """
    known = inspect.signature(LearnedPolicy).parameters
    options: dict[str, float | int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--learned {pair!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(known)}")
        options[name] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
    return options


def main() -> int:
    parser = argparse.ArgumentParser(description="SIMULATION: routing policies on randomized "
                                                 "worlds (domain randomization)")
    parser.add_argument("--worlds", type=int, default=100, help="worlds (default 100)")
    parser.add_argument("--seeds", default="report",
                        help="report (default: drawn now from >= 1000), tune (< 1000), or a "
                             "list such as 1000,1001 or 0-9")
    parser.add_argument("--feedback", type=int, default=100,
                        help="feedbacks per kind of prompt before (b) (default 100)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="usage-only requests per kind of prompt before (a): what a "
                             "deployed gateway learns with no feedback (default 0: none)")
    parser.add_argument("--held-out", type=int, default=400,
                        help="held-out prompts per world, by traffic share (default 400)")
    parser.add_argument("--policies", default="learned,rules",
                        help="policy specs, comma-separated (default learned,rules)")
    parser.add_argument("--explain", action="store_true",
                        help="also print, per world and kind of prompt, the classifier's "
                             "scores, the policy's strategies and the oracle's plan")
    parser.add_argument("--learned", action="append", default=[], metavar="NAME=VALUE",
                        help="a LearnedPolicy setting for every learned policy (e.g. "
                             "exploration=0.2); repeat for several")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    try:
        options = learned_options(args.learned)
    except ValueError as exc:
        parser.error(str(exc))
    seeds = pick_seeds(args.seeds, args.worlds)
    specs = [s.strip() for s in args.policies.split(",") if s.strip()]
    print("SIMULATION: every figure below comes from randomized simulated worlds "
          "(router_models/worlds.py), not from a real model.")
    print(f"seeds ({args.seeds}, {len(seeds)}): {','.join(map(str, seeds))}")
    classifier = Classifier.load()
    factories = {spec: policy_factory(spec, **options) for spec in specs}
    results: dict[str, list[WorldResult]] = {spec: [] for spec in specs}
    started, cpu_started = time.perf_counter(), time.process_time()
    for seed in tqdm(seeds, desc="SIMULATION worlds", unit="world", file=sys.stderr):
        setup = set_up_world(seed, classifier, args.feedback, args.held_out)
        for spec in specs:
            results[spec].append(evaluate_policy(setup, factories[spec], spec, args.feedback,
                                                 args.warmup))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"{len(seeds)} worlds in {elapsed:.0f} s wall, {cpu:.0f} s CPU (one process; "
          f"{cpu / max(1, len(seeds)):.1f} s CPU per world)")
    print_world_rows(results)
    if args.explain:
        print_explanations(results)
    report = {spec: print_summary(spec, rows, args.feedback) for spec, rows in results.items()}
    if args.json:
        args.json.write_text(json.dumps({
            "simulation": True, "seeds": seeds, "feedback_per_kind": args.feedback,
            "summary": report,
            "worlds": {spec: [{"seed": r.seed, "type": r.world_type, "axes": r.axes,
                               "accuracy": r.accuracy, "tokens": r.tokens,
                               "best_fixed": r.fixed.strategy,
                               "best_fixed_accuracy": r.fixed.accuracy,
                               "best_fixed_tokens": r.fixed.tokens, "margin": r.margin,
                               "token_ratio": r.token_ratio, "oracle": r.oracle,
                               "trained_accuracy": r.trained_accuracy,
                               "trained_tokens": r.trained_tokens,
                               "trained_best_fixed_accuracy": r.trained_fixed.accuracy,
                               "trained_oracle": r.trained_oracle, "share": r.share,
                               "share_met": r.share_met, "observable": r.observable,
                               "observable_share": r.observable_share,
                               "per_kind": r.per_kind}
                              for r in rows]
                       for spec, rows in results.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
