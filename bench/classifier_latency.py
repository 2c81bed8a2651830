"""Scoring latency: how long ``Classifier.score`` (features + three calibrated heads) and a
policy decision take per prompt, over 1,000 real prompts.

What it measures
    1,000 prompts drawn evenly from the shared benchmark data (the zero_shot_cot datasets,
    MMLU, HotpotQA, FanOutQA, GSM8K) plus generated graph and arithmetic tasks, each sent as
    OpenAI chat messages (a system turn and the user turn). Each prompt is scored
    ``--repeats`` times after a warm-up pass; every call is timed with
    ``time.perf_counter_ns``. It prints p50, p90, p99 and max in microseconds for: feature
    extraction alone, ``Classifier.score`` (extraction included), ``rules`` and ``learned``
    decisions (given scores), and score + learned decision together. Target: p99 of
    ``Classifier.score`` under 1 ms.

How to run it (from the repository root)
    .venv/bin/python bench/classifier_latency.py [--repeats 5] [--data ../shared/data]

Single-threaded, in process; the machine's other load shows up in the tail.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router_models import load_default  # noqa: E402
from router_models.features import extract  # noqa: E402
from router_models.training_data import (  # noqa: E402
    DEFAULT_DATA_DIR,
    DataMissingError,
    load_examples,
)


def prompts(data: Path, n: int) -> list[list[dict[str, Any]]]:
    """``n`` chat requests spread evenly over the datasets (round robin, seeded)."""
    examples = load_examples(data, n_generated=200)
    by_dataset: dict[str, list[str]] = {}
    for e in examples:
        by_dataset.setdefault(e.dataset, []).append(e.text)
    rng = random.Random(0)
    for texts in by_dataset.values():
        rng.shuffle(texts)
    out: list[str] = []
    while len(out) < n:
        for texts in by_dataset.values():
            if texts and len(out) < n:
                out.append(texts.pop())
    return [[{"role": "system", "content": "Answer carefully."},
             {"role": "user", "content": text}] for text in out]


def timed(fn: Callable[[Any], Any], items: list[Any], repeats: int) -> list[float]:
    """Microseconds per call, every call of every repeat."""
    for item in items:  # warm-up (caches, lazy imports)
        fn(item)
    gc.collect()
    gc.disable()
    try:
        samples = []
        for _ in range(repeats):
            for item in items:
                start = time.perf_counter_ns()
                fn(item)
                samples.append((time.perf_counter_ns() - start) / 1000)
        return samples
    finally:
        gc.enable()


def row(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return (f"| {name:34} | {q[49]:7.1f} | {q[89]:7.1f} | {q[98]:7.1f} | "
            f"{max(samples):8.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        requests = prompts(args.data, args.n)
    except DataMissingError as exc:
        print(f"classifier_latency: {exc}", file=sys.stderr)
        return 1
    classifier, policies = load_default()
    rules, learned = policies["rules"], policies["learned"]
    scores = [classifier.score(m) for m in requests]
    chars = [len(m[1]["content"]) for m in requests]
    print(f"{len(requests)} real prompts ({statistics.median(chars):.0f} chars median, "
          f"{max(chars)} max), {args.repeats} repeats each; microseconds per call\n")
    print(f"| {'what':34} | {'p50':>7} | {'p90':>7} | {'p99':>7} | {'max':>8} |")
    print(f"| {'-' * 34} | {'-' * 7} | {'-' * 7} | {'-' * 7} | {'-' * 8} |")
    print(row("features.extract", timed(extract, requests, args.repeats)))
    print(row("Classifier.score (target p99 < 1000)",
              timed(classifier.score, requests, args.repeats)))
    print(row("rules.decide(scores)", timed(rules.decide, scores, args.repeats)))
    print(row("learned.decide(scores)", timed(learned.decide, scores, args.repeats)))
    print(row("score + learned.decide",
              timed(lambda m: learned.decide(classifier.score(m)), requests, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
