"""The plots of ``bench.bank_findings``: small PNGs (matplotlib, Agg backend), accuracy in % with
Wilson 95% error bars, n in every title.

- ``bank_vote_vs_chain.png``: per family, accuracy against the token budget for the greedy
  chain, the sampled chain and votes of 2, 4 and 8;
- ``bank_search_axis.png``: HotpotQA accuracy against 0/1/3 searches, and against the tokens
  a run reads and writes (prompt + completion);
- ``bank_early_stopping.png``: all families pooled, each stopping rule's accuracy against its
  mean samples, with the fixed vote;
- ``bank_deepconf.png``: all families pooled, each DeepConf vote against the plain vote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402

from bench.bank_figures import ARMS, CONFIDENCE_VOTES, Cell  # noqa: E402
from bench.bank_findings import ALL, Findings  # noqa: E402
from service.evaluation.analysis import wilson  # noqa: E402

DPI = 80


def _point(cell: Cell) -> tuple[float, float, float]:
    """(accuracy, lower error, upper error) in %, for ``errorbar``; NaN when n = 0."""
    if cell.n == 0:
        return math.nan, 0.0, 0.0
    p = 100 * cell.correct / cell.n
    low, high = wilson(cell.correct, cell.n)
    # Clamped: at 0% or 100% rounding can put the bound a hair past the point.
    return p, max(0.0, p - 100 * low), max(0.0, 100 * high - p)


def _errorbar(ax, xs: Sequence[float], cells: Sequence[Cell], **kwargs) -> None:  # noqa: ANN001
    points = [_point(c) for c in cells]
    ax.errorbar(xs, [p[0] for p in points], yerr=[[p[1] for p in points], [p[2] for p in points]],
                capsize=2, marker="o", markersize=3, linewidth=1, **kwargs)


def plot_vote_vs_chain(findings: Findings, path: Path) -> Path:
    """One panel per family: accuracy of every arm against the budget (log scale)."""
    by_family: dict[str, list] = {}
    for row in findings.vote_chain:
        by_family.setdefault(row.family, []).append(row)
    cols = 3
    rows = math.ceil(len(by_family) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.6 * rows), sharey=True, squeeze=False)
    for ax, (family, family_rows) in zip(axes.flat, by_family.items(), strict=False):
        family_rows = sorted(family_rows, key=lambda r: r.budget)
        budgets = [r.budget for r in family_rows]
        for i, arm in enumerate(ARMS):
            # A small horizontal offset per arm keeps overlapping error bars readable.
            xs = [b * (1 + 0.04 * (i - 2)) for b in budgets]
            _errorbar(ax, xs, [r.cells[arm] for r in family_rows], label=arm)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets], fontsize=7)
        ax.set_ylim(-5, 105)
        ax.set_title(f"{family} (n = {family_rows[0].n})", fontsize=9)
    for ax in axes.flat[len(by_family):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("budget (tokens); a vote of k cuts each sample at budget / k", fontsize=9)
    fig.supylabel("accuracy % (Wilson 95%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_search_axis(findings: Findings, path: Path) -> Path:
    """HotpotQA: accuracy against searches, and against prompt + completion tokens."""
    rows = findings.search
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    counts = [r.searches for r in rows]
    # Offsets keep the two arms' error bars apart where they coincide.
    _errorbar(left, [c - 0.05 for c in counts], [r.greedy for r in rows], label="greedy chain")
    _errorbar(left, [c + 0.05 for c in counts], [r.vote for r in rows], label="vote of 8")
    left.set_ylim(-5, 105)
    left.set_xticks(counts)
    left.set_xlabel("searches (BM25 hits in the prompt)")
    left.set_ylabel("accuracy % (Wilson 95%)")
    left.legend(fontsize=7)
    _errorbar(right, [r.prompt_tokens + r.greedy_tokens for r in rows],
              [r.greedy for r in rows], label="greedy chain")
    _errorbar(right, [8 * r.prompt_tokens + r.vote_tokens for r in rows],
              [r.vote for r in rows], label="vote of 8 (8 prompts)")
    right.set_xscale("log")
    right.set_xlabel("tokens per item (prompt + completion)")
    n = ", ".join(f"{r.searches}: n = {r.n}" for r in rows)
    fig.suptitle(f"HotpotQA, searches ({n})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_early_stopping(findings: Findings, path: Path) -> Path:
    """All families pooled: each rule's accuracy against its mean samples."""
    rows = [r for r in findings.stopping if r.family == ALL]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if rows:
        _errorbar(ax, [rows[0].fixed_samples], [rows[0].fixed], label="fixed vote",
                  linestyle="none")
    for row in rows:
        _errorbar(ax, [row.samples], [row.accuracy], label=row.rule, linestyle="none")
    ax.set_xlim(0.5, 8.5)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("mean samples per item")
    ax.set_ylabel("accuracy % (Wilson 95%)")
    ax.set_title(f"early stopping, all families (n = {rows[0].n if rows else 0})", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_deepconf(findings: Findings, path: Path) -> Path:
    """All families pooled: each confidence vote's accuracy."""
    row = next((r for r in findings.confidence if r.family == ALL), None)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if row is not None:
        points = [_point(row.cells[name]) for name in CONFIDENCE_VOTES]
        ax.bar(range(len(points)), [p[0] for p in points],
               yerr=[[p[1] for p in points], [p[2] for p in points]], capsize=3)
        ax.set_xticks(range(len(points)), [n.replace(" (", "\n(") for n in CONFIDENCE_VOTES],
                      fontsize=6)
        ax.set_title(f"DeepConf votes of 8, all families (n = {row.n})", fontsize=9)
        ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy % (Wilson 95%)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(findings: Findings, folder: Path) -> list[Path]:
    """Write the four PNGs into ``folder`` (created when missing); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [plot_vote_vs_chain(findings, folder / "bank_vote_vs_chain.png"),
            plot_search_axis(findings, folder / "bank_search_axis.png"),
            plot_early_stopping(findings, folder / "bank_early_stopping.png"),
            plot_deepconf(findings, folder / "bank_deepconf.png")]
