"""How often ``router_models.steps.state_steps`` reads a prompt as a chain (two or more dependent
steps) on public datasets, next to the classifier's ``sequential`` head (>= 0.5), 200 prompts
each. Reads ../shared/data (via ``router_models.tasks.load_suite`` and the zero-shot-CoT copies
of BIG-bench tasks); a dataset that is absent is skipped.

Usage: ``python -m bench.steps_check [--limit 200]``.
"""

from __future__ import annotations

import argparse
import json

from router_models.classifier import Classifier
from router_models.policies.prior import CHAIN_STEPS
from router_models.steps import state_steps
from router_models.tasks import SuiteUnavailable, default_data_dir, load_suite

# Datasets whose answers build on intermediate results, by the literature's account.
CHAINS = {"gsm8k", "svamp", "multiarith", "object_tracking", "coin_flip", "last_letters",
          "date"}
SUITES = ("gsm8k", "svamp", "multiarith", "commonsenseqa", "strategyqa", "mmlu", "hotpotqa")
# zero_shot_cot/dataset copies: (folder, file, list key, text key).
BIG_BENCH = {"object_tracking": ("Bigbench_object_tracking", "task.json", "examples", "input"),
             "date": ("Bigbench_Date", "task.json", "examples", "input"),
             "coin_flip": ("coin_flip", "coin_flip.json", "examples", "question"),
             "last_letters": ("last_letters", "last_letters.json", "examples", "question")}


def prompts(limit: int) -> dict[str, list[str]]:
    """Dataset name -> up to ``limit`` prompts, for the datasets present."""
    out: dict[str, list[str]] = {}
    for suite in SUITES:
        try:
            out[suite] = [item.prompt() for item in load_suite(suite, limit=limit)]
        except SuiteUnavailable:
            continue
    data = default_data_dir()
    for name, (folder, file, key, text) in BIG_BENCH.items():
        path = data / "zero_shot_cot" / "dataset" / folder / file if data else None
        if path is None or not path.is_file():
            continue
        examples = json.loads(path.read_text())[key][:limit]
        out[name] = [e[text] for e in examples]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args(argv)
    classifier = Classifier.load()
    print(f"| dataset | chain by the literature | n | steps >= {CHAIN_STEPS} | "
          "sequential >= 0.5 | either |")
    print("|---|---|---:|---:|---:|---:|")
    for name, texts in prompts(args.limit).items():
        steps = [state_steps(t) >= CHAIN_STEPS for t in texts]
        head = [classifier.score(t).sequential >= 0.5 for t in texts]
        n = len(texts)
        print(f"| {name} | {'yes' if name in CHAINS else 'no'} | {n} | "
              f"{sum(steps) / n:.0%} | {sum(head) / n:.0%} | "
              f"{sum(a or b for a, b in zip(steps, head, strict=True)) / n:.0%} |")


if __name__ == "__main__":
    main()
