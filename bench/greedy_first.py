"""Greedy first: a vote whose first sample is the greedy chain, against a plain vote and
against the greedy chain alone, read straight from an outcome bank (no gateway, no model).

Per sample depth ``L`` (tokens) and vote width ``k``, on every run of the bank:

- ``greedy``: the greedy chain cut at ``L`` (read leniently, as the evaluation reads a chain);
- ``vote k``: a majority vote of the first ``k`` recorded samples (temperature 0.7), each cut
  at ``L``;
- ``greedy + k-1``: the greedy chain and the first ``k - 1`` samples, each cut at ``L``; ties
  go to the answer seen first, the greedy one (``router_models.voting.winner``), as in the
  gateway's votes with ``vote_greedy_first`` (``service.strategies.parallel_vote``).

And early stopping on greedy-first votes of 8 (whole samples): the gateway's default rule
(``bench.bank_stopping.default_rules``) and the embedded model's own
(``service.local_backend.QWEN_CODER_05B.vote_stopping``: a first wave of 2, Beta 0.6) replayed
on the greedy chain then 7 samples, against the same rules on 8 samples and the fixed votes;
the stopped vote against the fixed one is paired on the same runs.

A sample cut before it stated an answer casts no vote (``bench.bank_figures.ballot_answer``).
Intervals are Wilson 95%; differences are paired on the same runs (bootstrap 95% interval,
McNemar exact p; ``service.evaluation.analysis.paired_difference``). Every arm spends about
``k`` samples' tokens, so the comparison is at equal width, not at equal tokens
(``bench/bank_findings.py`` compares votes with one chain at equal tokens).

Usage: ``python -m bench.greedy_first [--bank PATH] [--depths 256,512] [--widths 3,5,8]
[--since-bank OLDER]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench.bank_figures import Cell, ballot_answer, cut_answer, right, vote
from bench.bank_findings import paired, recorded_since
from bench.bank_stopping import FULL, StopRule, default_rules, sample_answers
from bench.options import load_bank, token_budgets
from router_models.bank import BankError, BankRun
from router_models.voting import Ballot, tally, winner
from service.local_backend import QWEN_CODER_05B


def arms(run: BankRun, depth: int, width: int) -> tuple[bool, bool, bool]:
    """(greedy, plain vote of ``width``, greedy first then ``width - 1`` samples) right on
    ``run`` at ``depth`` tokens a sample.

    Raises:
        ValueError: the run holds fewer than ``width`` samples.
    """
    if len(run.samples) < width:
        raise ValueError(f"{run.key}: {len(run.samples)} samples, a vote of {width} needs more")
    greedy = right(run, cut_answer(run, run.greedy, depth))
    # ties go to the answer seen first (``voting.winner``), so to the greedy one
    plain = vote(run, run.samples[:width], depth)
    first = vote(run, [run.greedy, *run.samples[:width - 1]], depth)
    return greedy, plain, first


def table(runs: Sequence[BankRun], depths: Sequence[int], widths: Sequence[int]) -> str:
    """The markdown table of every depth and width, all runs pooled (a width no run holds
    gets a row of n = 0)."""
    lines = ["| depth (tokens) | width | n | greedy % | plain vote % | greedy first % | "
             "greedy first - plain, points | greedy first - greedy, points |",
             "| ---: | ---: | ---: | --- | --- | --- | --- | --- |"]
    for depth in depths:
        for width in widths:
            usable = [r for r in runs if len(r.samples) >= width]
            if not usable:  # no run holds this many samples
                lines.append(f"| {depth} | {width} | 0 | - | - | - | - | - |")
                continue
            outcomes = [arms(r, depth, width) for r in usable]
            greedy, plain, first = (list(column) for column in zip(*outcomes, strict=True))
            n = len(usable)
            lines.append(
                f"| {depth} | {width} | {n} | {Cell(sum(greedy), n).render()} | "
                f"{Cell(sum(plain), n).render()} | {Cell(sum(first), n).render()} | "
                f"{paired(first, plain).render()} | {paired(first, greedy).render()} |")
    return "\n".join(lines)


def per_suite(runs: Sequence[BankRun], depth: int, width: int) -> str:
    """The markdown table per suite at one depth and width."""
    lines = [f"| suite | n | greedy % | plain vote of {width} % | greedy first % |",
             "| --- | ---: | --- | --- | --- |"]
    suites = sorted({r.suite for r in runs})
    for suite in suites:
        usable = [r for r in runs if r.suite == suite and len(r.samples) >= width]
        outcomes = [arms(r, depth, width) for r in usable]
        n = len(usable)
        if not n:
            continue
        counts = [sum(o[i] for o in outcomes) for i in range(3)]
        lines.append(f"| {suite} | {n} | " + " | ".join(Cell(c, n).render() for c in counts)
                     + " |")
    return "\n".join(lines)


def embedded_rule() -> StopRule:
    """The early-stopping rule the embedded model's votes run (``LocalModel.vote_stopping``)."""
    assert QWEN_CODER_05B.vote_stopping is not None, "the embedded model has its own rule"
    wave, threshold = QWEN_CODER_05B.vote_stopping
    return StopRule(f"the embedded model's rule (first wave {wave}, then 1, Beta {threshold:g})",
                    "beta", first_wave=wave, wave=1, threshold=threshold)


def stopping(runs: Sequence[BankRun], width: int = 8, rule: StopRule | None = None) -> str:
    """A stopping rule (default: the gateway's default, ``default_rules``) on plain and
    greedy-first votes of ``width`` whole samples: accuracy, the stopped vote minus the fixed
    one (paired), mean samples read and the saving against the fixed vote, as markdown."""
    rule = rule or default_rules(width)[1]
    usable = [r for r in runs if len(r.samples) >= width]
    lines = [f"| vote of {width} | fixed % | stopped by the rule % | stopped - fixed, points "
             "(paired 95%), McNemar p | samples read | saving |",
             "| --- | --- | --- | --- | ---: | ---: |"]
    for name in ("plain", "greedy first"):
        fixed, stopped, read = [], [], []
        for run in usable:
            answers = sample_answers(run)[:width]
            pool = list(run.samples[:width])
            if name == "greedy first":
                answers = [ballot_answer(run, run.greedy, FULL), *answers[:width - 1]]
                pool = [run.greedy, *pool[:width - 1]]
            used, counts = rule.replay(answers, [s.conf_min for s in pool],
                                       [s.lp_mean for s in pool])
            fixed.append(right(run, winner(tally(Ballot(a) for a in answers))))
            stopped.append(right(run, winner(counts)))
            read.append(used)
        n = len(usable)
        # no run holds ``width`` samples: nothing was read, and no saving to divide by
        read_cell = f"{sum(read) / n:.2f}" if n else "-"
        saving = f"{width * n / sum(read):.2f}x" if n else "-"
        lines.append(f"| {name} | {Cell(sum(fixed), n).render()} | "
                     f"{Cell(sum(stopped), n).render()} | "
                     f"{paired(stopped, fixed).render() if n else '-'} | {read_cell} | {saving} |")
    return f"{rule.name}:\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, default=None,
                        help="outcome bank folder (default: the shipped one)")
    parser.add_argument("--depths", type=token_budgets, default=(256, 512),
                        help="tokens per sample, comma-separated (default 256,512)")
    parser.add_argument("--widths", type=token_budgets, default=(3, 5, 8),
                        help="vote widths, comma-separated (default 3,5,8)")
    parser.add_argument("--since-bank", type=Path, default=None,
                        help="read only the runs this older bank lacks (items recorded since: "
                             "held out from anything chosen on the older bank)")
    args = parser.parse_args(argv)
    bank = load_bank(parser, args.bank)
    if args.since_bank is not None:
        try:
            bank = recorded_since(bank, load_bank(parser, args.since_bank))
        except BankError as exc:
            parser.error(str(exc))
    runs = [r for r in bank.runs if r.samples]
    print(f"Greedy first on the outcome bank: {len(runs)} runs "
          f"({', '.join(f'{s} {n}' for s, n in sorted(bank.suites().items()))})\n")
    print(table(runs, args.depths, args.widths))
    print(f"\nPer suite, {max(args.depths)} tokens a sample, vote of 5:\n")
    print(per_suite(runs, max(args.depths), 5))
    print("\nEarly stopping, whole samples: " + stopping(runs))
    print("\nEarly stopping, whole samples: " + stopping(runs, rule=embedded_rule()))


if __name__ == "__main__":
    main()
