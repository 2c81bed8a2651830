"""Writing an evaluation's outputs: ``summary.json``, PNG plots (matplotlib, Agg) and
``report.md``, whose first table names the winning strategy per family and budget."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.evaluation import analysis
from service.evaluation.analysis import ALL, Cell, Comparison, EnvelopePoint

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(pair: Sequence[float] | None, scale: float = 100.0) -> str:
    if pair is None:
        return "-"
    return f"[{scale * pair[0]:.1f}, {scale * pair[1]:.1f}]"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot(out_dir: Path, cells: Sequence[Cell], envelope: Sequence[EnvelopePoint]) -> list[Path]:
    """One PNG per family (and ``all``): accuracy against mean completion tokens, a line per
    strategy over its budgets with Wilson 95% bars, the oracle envelope dashed, each policy a
    star. A family with no answered request (every one failed) gets no plot: an empty axes
    would read as a result. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for family in sorted({c.family for c in cells if c.n}, key=lambda f: (f == ALL, f)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        mine = [c for c in cells if c.family == family and c.n]
        for strategy in sorted({c.strategy for c in mine if c.budget_tokens is not None}):
            line = sorted((c for c in mine if c.strategy == strategy),
                          key=lambda c: c.budget_tokens or 0)
            xs = [max(c.mean_tokens, 1.0) for c in line]
            ys = [c.accuracy for c in line]
            errors = [[max(0.0, c.accuracy - c.accuracy_ci95[0]) for c in line],
                      [max(0.0, c.accuracy_ci95[1] - c.accuracy) for c in line]]
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=strategy)
        oracle = sorted((p for p in envelope if p.family == family),
                        key=lambda p: p.budget_tokens)
        if oracle:
            ax.plot([max(p.mean_tokens, 1.0) for p in oracle], [p.accuracy for p in oracle],
                    "k--", marker=".", label="per-prompt oracle")
        for c in mine:
            if c.budget_tokens is None:
                ax.plot([max(c.mean_tokens, 1.0)], [c.accuracy], marker="*", markersize=14,
                        linestyle="none", label=c.strategy)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("mean completion tokens per prompt (all upstream calls)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{family}: accuracy vs tokens")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = out_dir / f"accuracy_vs_tokens_{_slug(family)}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files


def _winner_rows(comparisons: Sequence[Comparison], cells: Sequence[Cell]) -> list[str]:
    by_cell = {(c.family, c.strategy, c.budget_tokens): c for c in cells}
    rows = ["| family | budget | winner | winner accuracy % (95% CI) | runner-up | "
            "margin, points (95% CI) | McNemar p | n paired | mean tokens winner / runner-up |",
            "| --- | ---: | --- | --- | --- | --- | ---: | ---: | --- |"]
    ordered = sorted(comparisons, key=lambda c: (c.family == ALL, c.family, c.budget_tokens))
    for c in ordered:
        w = by_cell[(c.family, c.winner, c.budget_tokens)]
        r = by_cell.get((c.family, c.runner_up, c.budget_tokens)) if c.runner_up else None
        notes = [] if c.significant or c.runner_up is None else ["tie"]
        if w.ran_as_asked is not None and w.ran_as_asked < w.n:
            notes.append(f"ran as asked on {w.ran_as_asked} of {w.n} items")
        winner = c.winner + (f" ({'; '.join(notes)})" if notes else "")
        margin = "-" if c.difference is None else \
            f"{100 * c.difference:+.1f} {_ci(c.difference_ci95)}"
        p = "-" if c.p_value is None else f"{c.p_value:.3g}"
        tokens = f"{w.mean_tokens:.0f}" + (f" / {r.mean_tokens:.0f}" if r else "")
        rows.append(f"| {c.family} | {c.budget_tokens} | {winner} | {_pct(w.accuracy)} "
                    f"{_ci(w.accuracy_ci95)} | {c.runner_up or '-'} | {margin} | {p} | "
                    f"{c.n_paired} | {tokens} |")
    return rows


def write_report(out_dir: Path, records: Sequence[dict[str, Any]],
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json``, the plots and ``report.md`` for ``records``; return the
    summary. ``meta`` (backend, mode, suites, wall time, command) heads both."""
    summary = analysis.summary(records)
    summary["meta"] = meta
    cells = [Cell(**{**c, "accuracy_ci95": tuple(c["accuracy_ci95"]),
                     "mean_tokens_ci95": tuple(c["mean_tokens_ci95"])})
             for c in summary["cells"]]
    comparisons = [Comparison(**{**c, "difference_ci95": None if c["difference_ci95"] is None
                                 else tuple(c["difference_ci95"])})
                   for c in summary["comparisons"]]
    envelope = [EnvelopePoint(**{**p, "accuracy_ci95": tuple(p["accuracy_ci95"])})
                for p in summary["envelope"]]
    plots = plot(out_dir, cells, envelope)
    summary["plots"] = [p.name for p in plots]
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    lines = ["# Evaluation report", ""]
    if summary["simulated"]:
        lines += ["**SIMULATION.** These figures come from the simulated reasoner "
                  "(`ttc-router sim`), whose behaviour is set in YAML; they show the harness "
                  "and the world model, not a real model.", ""]
    lines += [f"- backend: `{meta.get('backend')}` (mode `{meta.get('mode')}`, model "
              f"`{meta.get('model')}`)",
              f"- suites: {', '.join(meta.get('suites', []))}; items: {summary['items']}; "
              f"records: {summary['records']} ({summary['errors']} errors, left out)",
              f"- wall time of the last invocation: {meta.get('wall_s', 0):.1f} s; sum of "
              f"request latencies over all records: {meta.get('latency_sum_s', 0):.1f} s",
              f"- command: `{meta.get('command', '')}`", "",
              "## Which strategy wins at equal tokens", "",
              "Per family and token budget, the strategy with the best accuracy. The margin is "
              "its accuracy minus the runner-up's on the same items, in percentage points, "
              "with a paired bootstrap 95% interval; `(tie)` marks a margin whose interval "
              "reaches 0 or whose McNemar p is 0.05 or more. Accuracy intervals are "
              "Wilson 95%. A winner the gateway did not always run as asked says on how many "
              "items it did (a vote whose samples cannot finish in the budget runs one "
              "chain).", ""]
    lines += _winner_rows(comparisons, cells)
    lines += ["", "## Accuracy and tokens per strategy", "",
              "| family | strategy | budget | n | accuracy % | 95% CI (Wilson) | "
              "mean completion tokens (95% CI) | errors | ran as asked |",
              "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: |"]
    for c in sorted(cells, key=lambda c: (c.family == ALL, c.family, c.strategy,
                                          c.budget_tokens or 0)):
        ran = "-" if c.ran_as_asked is None else f"{c.ran_as_asked} of {c.n}"
        lines.append(f"| {c.family} | {c.strategy} | {c.budget_tokens or '-'} | {c.n} | "
                     f"{_pct(c.accuracy)} | {_ci(c.accuracy_ci95)} | {c.mean_tokens:.0f} "
                     f"{_ci(c.mean_tokens_ci95, 1.0)} | {c.errors} | {ran} |")
    lines += ["", "## Per-prompt oracle envelope", "",
              "Per item, the cheapest configuration (strategy and budget up to the cap) that "
              "answered correctly, when any did: an upper bound for any router over these "
              "strategies (it also profits from sampling luck).", "",
              "| family | budget cap | n | accuracy % (95% CI) | mean completion tokens |",
              "| --- | ---: | ---: | --- | ---: |"]
    for p in sorted(envelope, key=lambda p: (p.family == ALL, p.family, p.budget_tokens)):
        lines.append(f"| {p.family} | {p.budget_tokens} | {p.n} | {_pct(p.accuracy)} "
                     f"{_ci(p.accuracy_ci95)} | {p.mean_tokens:.0f} |")
    policies = [c for c in cells if c.budget_tokens is None]
    if policies:
        lines += ["", "## Policies", "", "| family | policy | n | accuracy % (95% CI) | "
                  "mean completion tokens |", "| --- | --- | ---: | --- | ---: |"]
        for c in policies:
            lines.append(f"| {c.family} | {c.strategy} | {c.n} | {_pct(c.accuracy)} "
                         f"{_ci(c.accuracy_ci95)} | {c.mean_tokens:.0f} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Method", "",
              "Tokens are upstream completion tokens as the reply's `usage` reports them (all "
              "calls a request made). In `client` mode the strategies are approximated by the "
              "request alone (see `service/evaluation/runner.py`). Intervals: Wilson for "
              "accuracies (statsmodels), paired percentile bootstrap with 2,000 resamples for "
              "differences (scipy), McNemar's exact test for p-values (statsmodels).", ""]
    (out_dir / REPORT_FILE).write_text("\n".join(lines))
    return summary
