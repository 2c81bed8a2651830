"""How a vote should read a sample cut by its cap, measured on an outcome bank (no model).

Per family, the accuracy of a majority vote (self-consistency, Wang et al. 2023) of the first
``k`` recorded samples at their recorded length, two ways:

- ``lenient``: every sample votes with the answer the evaluation's checker reads in it (the
  stated answer, else the last number or option on its last line), cut or not;
- ``stated``: a sample cut by the recording's cap votes only with an answer it stated ("The
  answer is", ``\\boxed{}``, "Answer:"), as the gateway's votes read it
  (``service.strategies.parallel_vote``; ``bench.bank_figures.ballot_answer``).

Closed-book runs only (no searches). Usage: ``python -m bench.cut_votes [--bank PATH]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench.bank_figures import ballot_answer, cut_answer, vote
from bench.bank_stopping import FULL
from bench.options import load_bank
from router_models.bank import BankRun

VOTE_SIZES = (3, 5, 8)
READINGS = ("lenient", "stated")


def voted_right(run: BankRun, k: int, reading: str) -> bool:
    """Whether the majority of ``run``'s first ``k`` samples, read the ``reading`` way, is
    right. Raises ValueError for an unknown reading."""
    if reading not in READINGS:
        raise ValueError(f"unknown reading {reading!r}; known: {', '.join(READINGS)}")
    return vote(run, run.samples[:k], FULL,
                read=cut_answer if reading == "lenient" else ballot_answer)


def table(runs: Sequence[BankRun]) -> list[str]:
    """Markdown rows: per family and all, items and right votes of each size both ways."""
    families = sorted({run.item.family for run in runs})
    rows = ["| family | items | " + " | ".join(
        f"vote {k} {reading}" for k in VOTE_SIZES for reading in READINGS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in VOTE_SIZES for _ in READINGS) + " |"]
    for family in [*families, "all"]:
        chosen = [r for r in runs if family in ("all", r.item.family)]
        cells = [str(sum(voted_right(r, k, reading) for r in chosen))
                 for k in VOTE_SIZES for reading in READINGS]
        rows.append(f"| {family} | {len(chosen)} | " + " | ".join(cells) + " |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Majority votes of the first k recorded samples of an outcome bank, with "
                    "cut samples read leniently or only by the answer they stated.")
    parser.add_argument("--bank", type=Path, default=None,
                        help="outcome bank folder (default: the shipped one)")
    args = parser.parse_args(argv)
    bank = load_bank(parser, args.bank)
    runs = [run for run in bank.runs if run.searches == 0 and run.samples]
    print("\n".join(table(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
