"""Votes against one chain at equal tokens, read straight from an outcome bank (no gateway, no
model): per suite and token budget ``B``, the accuracy of

- ``chain``: one sampled chain (the first recorded sample) cut at ``B`` tokens,
- ``greedy``: the greedy chain cut at ``B`` tokens,
- ``vote k``: a majority vote (self-consistency, Wang et al. 2023) of the first ``k`` recorded
  samples, each cut at ``B // k`` tokens,

and, at the recorded length, a plain vote of all samples against DeepConf's (Fu et al. 2025)
confidence-weighted vote (each vote weighted by the sample's lowest group confidence) and
confidence-filtered vote (only the most confident half of the samples vote).

A cut chain's answer is read leniently, as the gateway's votes and the evaluation's checkers
read it (``router_models.tasks.checkers.parsed``: the stated answer, else the last number);
no forced final answer is added (the gateway's sequential strategy adds one). Intervals are
Wilson 95% (``service.evaluation.analysis.wilson``).

Usage: ``python -m bench.bank_figures [--bank PATH] [--budgets 128,256,512,1024]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router_models.bank import Bank, BankRun, BankSample
from router_models.tasks.checkers import is_correct, parsed
from router_models.voting import Ballot, tally, winner
from service.evaluation.analysis import wilson

VOTE_SIZES = (2, 4, 8)


@dataclass(frozen=True)
class Cell:
    """One accuracy: ``correct`` of ``n`` items."""

    correct: int
    n: int

    def render(self) -> str:
        """``62.5 [30.6, 86.3]``: percent, with the Wilson 95% interval."""
        if self.n == 0:
            return "-"
        low, high = wilson(self.correct, self.n)
        return f"{100 * self.correct / self.n:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def cut_answer(run: BankRun, sample: BankSample, tokens: int) -> str | None:
    """The answer of ``sample``'s first ``tokens`` pieces, in the checker's canonical form."""
    return parsed(run.item, "".join(sample.tokens[:tokens]))


def right(run: BankRun, answer: str | None) -> bool:
    """Whether ``answer`` (canonical form) is the item's gold answer."""
    return answer is not None and is_correct(run.item, answer)


def vote(run: BankRun, samples: Sequence[BankSample], tokens: int,
         weights: Sequence[float] | None = None) -> bool:
    """Whether the (weighted) majority of ``samples`` cut at ``tokens`` is right."""
    ballots = [Ballot(cut_answer(run, s, tokens), 1.0 if weights is None else w)
               for s, w in zip(samples, weights or [1.0] * len(samples), strict=True)]
    return right(run, winner(tally(ballots)))


def budget_row(runs: Sequence[BankRun], budget: int) -> dict[str, Cell]:
    """The accuracies at one budget over ``runs``."""
    n = len(runs)
    sampled = [r for r in runs if r.samples]
    row = {"chain": Cell(sum(right(r, cut_answer(r, r.samples[0], budget)) for r in sampled),
                         len(sampled)),
           "greedy": Cell(sum(right(r, cut_answer(r, r.greedy, budget)) for r in runs), n)}
    for k in VOTE_SIZES:
        usable = [r for r in runs if len(r.samples) >= k]
        row[f"vote {k}"] = Cell(sum(vote(r, r.samples[:k], budget // k) for r in usable),
                                len(usable))
    return row


def confidence_row(runs: Sequence[BankRun]) -> dict[str, Cell]:
    """Plain, confidence-weighted and confidence-filtered votes of all samples, uncut."""
    n = len(runs)
    plain = weighted = filtered = 0
    for run in runs:
        samples, full = list(run.samples), 10 ** 6
        plain += vote(run, samples, full)
        weighted += vote(run, samples, full, [s.conf_min for s in samples])
        kept = sorted(samples, key=lambda s: -s.conf_min)[:max(1, len(samples) // 2)]
        filtered += vote(run, kept, full)
    return {"vote": Cell(plain, n), "confidence-weighted": Cell(weighted, n),
            "confidence-filtered (top 50%)": Cell(filtered, n)}


def groups(bank: Bank) -> dict[str, list[BankRun]]:
    """Runs per suite; HotpotQA split by searches (``hotpotqa/1`` ...)."""
    out: dict[str, list[BankRun]] = {}
    for run in bank.runs:
        name = f"{run.suite}/{run.searches}" if run.suite == "hotpotqa" else run.suite
        out.setdefault(name, []).append(run)
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=Path, default=None, help="default: the shipped bank")
    parser.add_argument("--budgets", default="128,256,512,1024")
    args = parser.parse_args(argv)
    bank = Bank.load(args.bank)
    budgets = [int(b) for b in args.budgets.split(",")]
    print(f"outcome bank {bank.path}: {len(bank)} runs; model "
          f"{bank.meta.get('model_file')}; accuracy % [Wilson 95%]\n")
    columns = ["chain", "greedy", *(f"vote {k}" for k in VOTE_SIZES)]
    print("| suite | n | budget | " + " | ".join(columns) + " |")
    print("| --- | ---: | ---: |" + " --- |" * len(columns))
    for name, runs in groups(bank).items():
        for budget in budgets:
            row = budget_row(runs, budget)
            print(f"| {name} | {len(runs)} | {budget} | "
                  + " | ".join(row[c].render() for c in columns) + " |")
    print("\n| suite | n | " + " | ".join(confidence_row([]).keys()) + " |")
    print("| --- | ---: |" + " --- |" * 3)
    for name, runs in groups(bank).items():
        row = confidence_row(runs)
        print(f"| {name} | {len(runs)} | " + " | ".join(c.render() for c in row.values()) + " |")


if __name__ == "__main__":
    main()
