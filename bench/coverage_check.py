"""How often the gateway reads a public dataset's prompts as questions for a real document
collection: the HotpotQA corpus (994 Wikipedia articles) indexed as ``ttc-router index add``
does, each prompt's top 3 hits read by ``service.coverage`` and ``prior.read_search``, as
``Router.search_evidence`` does. Word problems are self-contained, so every one read as a
search prompt is a misreading; HotpotQA's own questions should be read as search prompts.

Prints, per dataset, the share read as search by the word share alone, by the word or name
share (``coverage_shares``: a self-contained word problem, ``router_models.quantities``, has
neither), and by the gateway's reading (a prompt that states two or more dependent steps is
not covered by its names alone either).

Usage: ``python -m bench.coverage_check [--limit 200]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.outcome_bank import Retriever
from bench.steps_check import prompts
from router_models.plan import Scores
from router_models.policies.prior import COVERED, read_search
from router_models.steps import state_steps
from router_models.tasks import default_data_dir, load_suite
from service.coverage import coverage_shares
from service.routing import COVERAGE_HITS


def hotpotqa_corpus() -> Path:
    """The HotpotQA corpus file in ../shared/data."""
    data = default_data_dir()
    path = data / "hotpotqa" / "hotpotqa_train_corpus.json" if data else None
    if path is None or not path.is_file():
        raise SystemExit("HotpotQA corpus not found: see ../shared/data/MANIFEST.md")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args(argv)
    # The outcome bank's retriever indexes the corpus as `ttc-router index add` does (kept
    # referenced: its index lives in its temporary folder).
    retriever = Retriever(hotpotqa_corpus())
    datasets = prompts(args.limit)
    # HotpotQA's bare questions, as a user would ask them (the suite's prompt adds an
    # instruction line).
    datasets["hotpotqa"] = [item.question for item in load_suite("hotpotqa", limit=args.limit)]
    print("| dataset | n | search by words | by words or names | gateway (steps before names) |")
    print("|---|---:|---:|---:|---:|")
    for name, texts in datasets.items():
        words = either = read = 0
        for text in texts:
            shares = coverage_shares(text, retriever.index.search(text, COVERAGE_HITS))
            scores = Scores(0.5, 0.5, 0.0, steps=state_steps(text))
            words += shares.words >= COVERED
            either += max(shares) >= COVERED
            read += read_search(scores, shares.words, shares.names).search >= COVERED
        n = len(texts)
        print(f"| {name} | {n} | {words / n:.0%} | {either / n:.0%} | {read / n:.0%} |")

if __name__ == "__main__":
    main()
