"""A vote whose first wave is all cut: draw on, or give the rest to one chain? Replayed on an
outcome bank (no model, no gateway).

Per sample depth ``d``, over the closed-book runs with 8 recorded samples: the runs whose
first 3 samples, cut at ``d`` tokens, all stopped before stating an answer (a cut sample
votes only with a stated answer, ``bench.bank_figures.ballot_answer``); how many of their
samples 4-8 state one at ``d``; and how many such runs each way answers right:

- ``draw on``: waves of one more sample at ``d`` under the Beta rule
  (``router_models.voting.is_settled``, threshold 0.9) up to 8, as the gateway's votes did;
- ``chain``: one fresh chain (the 4th recorded sample) of the 5 x ``d`` tokens the undrawn
  samples would have had, less sequential's reserve (``min(64, rest // 4)``), read by its
  stated answer, and leniently as a stand-in for the forced answer the reserve buys.

Recorded samples stop at 512 tokens, so chains longer than that are read at 512 (the chain
column is a lower bound from d = 128 on). Usage: ``python -m bench.cut_first_wave [--bank PATH]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench.bank_figures import ballot_answer, cut_answer, right
from bench.options import load_bank
from router_models.bank import BankRun, BankSample
from router_models.voting import Ballot, is_settled, tally, winner

WIDTH, FIRST_WAVE, THRESHOLD, RESERVE = 8, 3, 0.9, 64
DEPTHS = (64, 96, 128, 170, 256)


def cut_unanswered(run: BankRun, sample: BankSample, depth: int) -> bool:
    """Whether ``sample`` cut at ``depth`` tokens (or by the recording's cap) stated nothing."""
    cut = len(sample.tokens) > depth or sample.finish_reason == "length"
    return cut and ballot_answer(run, sample, depth) is None


def drawn_on(run: BankRun, depth: int) -> bool:
    """Whether the vote that draws on after its first wave (waves of one, Beta rule) is right."""
    answers = [ballot_answer(run, s, depth) for s in run.samples[:WIDTH]]
    read = FIRST_WAVE
    while read < WIDTH and not is_settled(tally(Ballot(a) for a in answers[:read]),
                                          remaining=WIDTH - read, threshold=THRESHOLD):
        read += 1
    return right(run, winner(tally(Ballot(a) for a in answers[:read])))


def row(runs: Sequence[BankRun], depth: int) -> str:
    """One markdown row of the table for ``depth``."""
    cut = [r for r in runs if all(cut_unanswered(r, s, depth) for s in r.samples[:FIRST_WAVE])]
    later = [s for r in cut for s in r.samples[FIRST_WAVE:WIDTH]]
    answered = sum(not cut_unanswered(r, s, depth) for r in cut
                   for s in r.samples[FIRST_WAVE:WIDTH])
    rest = (WIDTH - FIRST_WAVE) * depth
    chain = rest - min(RESERVE, rest // 4)
    stated = sum(right(r, ballot_answer(r, r.samples[FIRST_WAVE], chain)) for r in cut)
    lenient = sum(right(r, cut_answer(r, r.samples[FIRST_WAVE], chain)) for r in cut)
    share = 100 * answered / len(later) if later else 0.0
    return (f"| {depth} | {len(runs)} | {len(cut)} | {answered}/{len(later)} ({share:.1f}%) | "
            f"{sum(drawn_on(r, depth) for r in cut)} | {chain} | {stated} / {lenient} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(
        "Votes whose first wave of 3 is all cut, replayed on an outcome bank: drawing on "
        "against one chain of the undrawn samples' tokens."))
    parser.add_argument("--bank", type=Path, default=None,
                        help="outcome bank folder (default: the shipped one)")
    args = parser.parse_args(argv)
    bank = load_bank(parser, args.bank)
    runs = [r for r in bank.runs if r.searches == 0 and len(r.samples) >= WIDTH]
    print("| depth | runs | first wave all cut | later samples that answer | right, draw on | "
          "chain tokens | right, chain (stated / lenient) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for depth in DEPTHS:
        print(row(runs, depth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
