"""Votes against one chain at equal tokens, read straight from an outcome bank (no gateway, no
model): per suite and token budget ``B``, the accuracy of

- ``chain``: one sampled chain (the first recorded sample) cut at ``B`` tokens,
- ``greedy``: the greedy chain cut at ``B`` tokens,
- ``vote k``: a majority vote (self-consistency, Wang et al. 2023) of the first ``k`` recorded
  samples, each cut at ``B // k`` tokens,

and, at the recorded length, a plain vote of all samples against DeepConf's (Fu et al. 2025)
confidence-weighted vote (each vote weighted by the sample's lowest group confidence),
confidence-filtered vote (only the most confident half of the samples vote) and the paper's
offline DeepConf-low / DeepConf-high (the top 10% / 90% most confident samples, weighted).
``bench/bank_findings.py`` adds paired tests, the search axis, early stopping and plots.

A cut chain's answer is read leniently, as the evaluation's checkers read it
(``router_models.tasks.checkers.parsed``: the stated answer, else the last number), which
stands in for the final answer the gateway's sequential strategy forces. A vote's sample cut
before it stated an answer casts no vote, as in the gateway's votes
(``service.strategies.parallel_vote``: its last line is mid-reasoning). Intervals are
Wilson 95% (``service.evaluation.analysis.wilson``).

Usage: ``python -m bench.bank_figures [--bank PATH] [--budgets 128,256,512,1024]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.options import load_bank, token_budgets
from router_models.answers import extract_answer
from router_models.bank import Bank, BankRun, BankSample
from router_models.tasks.checkers import is_correct, parsed
from router_models.voting import Ballot, tally, winner
from service.evaluation.analysis import wilson

VOTE_SIZES = (2, 4, 8)
# The samples' max_tokens in the bank's recording (bank.json): a vote of k reads k whole samples.
SAMPLE_TOKENS = 512


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


def ballot_answer(run: BankRun, sample: BankSample, tokens: int) -> str | None:
    """``sample``'s vote when cut at ``tokens``: its answer, or None when it was cut (by
    ``tokens`` or by the recording's cap) before it stated one (``extract_answer`` strict)."""
    text = "".join(sample.tokens[:tokens])
    cut = len(sample.tokens) > tokens or sample.finish_reason == "length"
    if cut and extract_answer(text, strict=True) is None:
        return None
    return parsed(run.item, text)


def right(run: BankRun, answer: str | None) -> bool:
    """Whether ``answer`` (canonical form) is the item's gold answer."""
    return answer is not None and is_correct(run.item, answer)


def vote(run: BankRun, samples: Sequence[BankSample], tokens: int,
         weights: Sequence[float] | None = None,
         read: Callable[[BankRun, BankSample, int], str | None] | None = None) -> bool:
    """Whether the (weighted) majority of ``samples`` cut at ``tokens`` is right, each read
    by ``read`` (default ``ballot_answer``: a cut sample votes only with a stated answer)."""
    read = read or ballot_answer
    ballots = [Ballot(read(run, s, tokens), 1.0 if weights is None else w)
               for s, w in zip(samples, weights or [1.0] * len(samples), strict=True)]
    return right(run, winner(tally(ballots)))


ARMS = ("chain", "greedy", *(f"vote {k}" for k in VOTE_SIZES))


def arm_samples(run: BankRun, arm: str) -> list[BankSample] | None:
    """The recorded samples ``arm`` (one of ``ARMS``) draws for ``run``, in recorded order:
    ``chain`` the first sampled chain, ``greedy`` the greedy chain, ``vote k`` the first ``k``
    samples; None when the run holds fewer. Raises ValueError for an unknown arm."""
    if arm == "greedy":
        return [run.greedy]
    if arm == "chain":
        return [run.samples[0]] if run.samples else None
    if arm.startswith("vote "):
        k = int(arm.split()[1])
        return list(run.samples[:k]) if len(run.samples) >= k else None
    raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")


def outcome(run: BankRun, arm: str, budget: int) -> bool | None:
    """Whether ``arm`` answers ``run`` right at ``budget`` tokens (a vote of ``k`` cuts each
    sample at ``budget // k``); None when the run lacks the samples."""
    samples = arm_samples(run, arm)
    if samples is None:
        return None
    if len(samples) == 1 and not arm.startswith("vote "):
        return right(run, cut_answer(run, samples[0], budget))
    return vote(run, samples, budget // len(samples))


def spent(run: BankRun, arm: str, budget: int) -> int:
    """Completion tokens ``arm`` spends on ``run`` at ``budget``: each sample's recorded length
    capped at its share of the budget (a chain that stops early spends less than the budget).
    0 when the run lacks the samples."""
    samples = arm_samples(run, arm) or []
    share = budget // max(1, len(samples))
    return sum(min(len(s.tokens), share) for s in samples)


def budget_row(runs: Sequence[BankRun], budget: int) -> dict[str, Cell]:
    """The accuracies at one budget over ``runs`` (each arm over the runs that have its
    samples)."""
    row = {}
    for arm in ARMS:
        results = [o for o in (outcome(r, arm, budget) for r in runs) if o is not None]
        row[arm] = Cell(sum(results), len(results))
    return row


CONFIDENCE_VOTES = ("vote", "confidence-weighted", "confidence-filtered (top 50%)",
                    "DeepConf-low (top 10%, weighted)", "DeepConf-high (top 90%, weighted)")


def most_confident(samples: Sequence[BankSample], percent: int) -> list[BankSample]:
    """The ``percent``% of ``samples`` with the highest lowest-group confidence (at least one;
    DeepConf's offline filtering, Fu et al. 2025, keeps the top 10% or 90% of traces)."""
    keep = max(1, len(samples) * percent // 100)
    return sorted(samples, key=lambda s: -s.conf_min)[:keep]


def confidence_outcomes(run: BankRun) -> dict[str, bool]:
    """Per ``CONFIDENCE_VOTES`` name, whether that vote of all of ``run``'s samples (uncut) is
    right: a plain majority vote; each vote weighted by the sample's lowest group confidence
    (``conf_min``); a plain vote of the most confident half; and DeepConf's filtered votes,
    which weight the votes of the kept traces by the same confidence."""
    samples, full = list(run.samples), 10 ** 6

    def weighted(chosen: Sequence[BankSample]) -> bool:
        return vote(run, chosen, full, [s.conf_min for s in chosen])

    return {"vote": vote(run, samples, full),
            "confidence-weighted": weighted(samples),
            "confidence-filtered (top 50%)": vote(run, most_confident(samples, 50), full),
            "DeepConf-low (top 10%, weighted)": weighted(most_confident(samples, 10)),
            "DeepConf-high (top 90%, weighted)": weighted(most_confident(samples, 90))}


def confidence_row(runs: Sequence[BankRun]) -> dict[str, Cell]:
    """Per ``CONFIDENCE_VOTES`` name, its accuracy over the runs that hold samples."""
    outcomes = [confidence_outcomes(r) for r in runs if r.samples]
    return {name: Cell(sum(o[name] for o in outcomes), len(outcomes))
            for name in CONFIDENCE_VOTES}


def groups(bank: Bank) -> dict[str, list[BankRun]]:
    """Runs per suite; HotpotQA split by searches (``hotpotqa/1`` ...)."""
    out: dict[str, list[BankRun]] = {}
    for run in bank.runs:
        name = f"{run.suite}/{run.searches}" if run.suite == "hotpotqa" else run.suite
        out.setdefault(name, []).append(run)
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(
        "Votes against one chain at equal tokens, and DeepConf's confidence-weighted and "
        "-filtered votes, read straight from an outcome bank (no gateway, no model): markdown "
        "tables on stdout, accuracy in % with Wilson 95% intervals."))
    parser.add_argument("--bank", type=Path, default=None,
                        help="outcome bank folder (default: the shipped one)")
    parser.add_argument("--budgets", type=token_budgets, default=[128, 256, 512, 1024],
                        help="comma-separated token budgets (default 128,256,512,1024)")
    args = parser.parse_args(argv)
    bank = load_bank(parser, args.bank)
    budgets = args.budgets
    print(f"outcome bank {bank.path}: {len(bank)} runs; model "
          f"{bank.meta.get('model_file')}; accuracy % [Wilson 95%]\n")
    columns = list(ARMS)
    print("| suite | n | budget | " + " | ".join(columns) + " |")
    print("| --- | ---: | ---: |" + " --- |" * len(columns))
    for name, runs in groups(bank).items():
        for budget in budgets:
            row = budget_row(runs, budget)
            print(f"| {name} | {len(runs)} | {budget} | "
                  + " | ".join(row[c].render() for c in columns) + " |")
    print("\n| suite | n | " + " | ".join(CONFIDENCE_VOTES) + " |")
    print("| --- | ---: |" + " --- |" * len(CONFIDENCE_VOTES))
    for name, runs in groups(bank).items():
        row = confidence_row(runs)
        print(f"| {name} | {len(runs)} | " + " | ".join(c.render() for c in row.values()) + " |")


if __name__ == "__main__":
    main()
