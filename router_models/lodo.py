"""Leave-one-dataset-out evaluation of the classifier: for each benchmark family, fit on every
other family, score the one left out, and report each score's AUC and Brier score there, plus
the pooled figures over all held-out predictions.

A random split within datasets measures little here: a prompt's dataset is easy to recognise
from its wording, and a classifier that recognises it scores well without learning what makes
a chain or a search pay. Holding a whole family out asks the question that traffic asks: does
the score carry over to prompts of a kind never seen?

Per family, AUC measures the ranking within that family (which of its prompts a chain helps);
it is undefined (None) where the family's label is constant (every HotpotQA prompt has
``search`` 1). The pooled AUC ranks all held-out predictions together, each made by a model
that never saw its family, so it also measures whether whole families are told apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router_models.classifier import HEADS
from router_models.features import Features
from router_models.plan import Scores
from router_models.reliability import metrics
from router_models.train import fit_heads
from router_models.training_data import Example, normalised, split_of


@dataclass
class LodoResult:
    """``by_family``: head -> held-out family -> reliability metrics (``reliability.metrics``),
    or None when the family has no label for that head. ``pooled``: head -> metrics over all
    held-out predictions; ``pooled_balanced``: the same with each family's labels weighing
    as much in total as any other family's (MMLU's 14,042 prompts would otherwise decide
    the pooled figure). ``families``: the families held out, in order."""

    families: list[str]
    by_family: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    pooled: dict[str, dict[str, Any]] = field(default_factory=dict)
    pooled_balanced: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Fold:
    """One fold: the held-out ``family`` and indices into the examples: ``held`` (that
    family), ``fit`` and ``calibration`` (the other families, less any prompt whose text
    also occurs in ``held``)."""

    family: str
    held: list[int]
    fit: list[int]
    calibration: list[int]


def folds(examples: Sequence[Example], seed: int = 0) -> Iterator[Fold]:
    """One ``Fold`` per family, in first-seen order; the training side is split by
    ``split_of`` (its ``calibration`` share calibrates, the rest fits)."""
    for family in dict.fromkeys(e.family for e in examples):
        held = [i for i, e in enumerate(examples) if e.family == family]
        held_texts = {normalised(examples[i].text) for i in held}
        rest = [i for i, e in enumerate(examples)
                if e.family != family and normalised(e.text) not in held_texts]
        splits = {i: split_of(examples[i].text, seed) for i in rest}
        yield Fold(family, held, [i for i in rest if splits[i] != "calibration"],
                   [i for i in rest if splits[i] == "calibration"])


def leave_one_dataset_out(examples: Sequence[Example], features: Sequence[Features],
                          seed: int = 0,
                          c_grid: Mapping[str, Sequence[float]] | None = None,
                          progress: Callable[[str], None] | None = None,
                          **fit_options: Any) -> LodoResult:
    """Hold out each family in turn (``Example.family``, in first-seen order).

    The training side of each fold drops every prompt whose normalised text also occurs in the
    held-out family (the same question recorded by two sources), then is split into fit and
    calibration parts by ``split_of`` (its ``calibration`` share calibrates; the rest fits),
    and fitted exactly as the shipped classifier (``train.fit_heads``).

    Args:
        examples, features: aligned, as ``train.train`` loads them.
        seed: the split seed.
        c_grid: per head, the inverse L2 strengths to try in each fold (default
            ``train.C_GRID``).
        progress: called with a line per fold (for the command's progress output).
        fit_options: passed to ``train.fit_heads`` (``hash_scale``, ``family_cap``).

    Returns:
        ``LodoResult``.

    Raises:
        ValueError: a fold's training side lacks a class for some head.
    """
    result = LodoResult(list(dict.fromkeys(e.family for e in examples)),
                        {h: {} for h in HEADS})
    held_scores: list[tuple[Example, Scores]] = []
    for n, fold in enumerate(folds(examples, seed), 1):
        family, held, fit, calib = fold.family, fold.held, fold.fit, fold.calibration
        classifier, _ = fit_heads(examples, features, fit, calib, seed, c_grid,
                                  **fit_options)
        scores = [classifier.score_features(features[i]) for i in held]
        held_scores += [(examples[i], s) for i, s in zip(held, scores, strict=True)]
        for head in HEADS:
            rows = _labelled([(examples[i], s) for i, s in zip(held, scores, strict=True)],
                             head)
            result.by_family[head][family] = metrics(
                [r[0] for r in rows], [r[2] for r in rows], [r[1] for r in rows]) \
                if rows else None
        if progress is not None:
            progress(f"[{n}/{len(result.families)}] held out {family} ({len(held)} prompts, "
                     f"trained on {len(fit)} + {len(calib)} calibration)")
    for head in HEADS:
        rows = _labelled(held_scores, head)
        result.pooled[head] = metrics([r[0] for r in rows], [r[2] for r in rows],
                                      [r[1] for r in rows])
        totals: dict[str, float] = {}
        for _, w, _, family in rows:
            totals[family] = totals.get(family, 0.0) + w
        result.pooled_balanced[head] = metrics(
            [r[0] for r in rows], [r[2] for r in rows],
            [r[1] / totals[r[3]] if totals[r[3]] > 0 else 0.0 for r in rows])
    return result


def _labelled(scored: Sequence[tuple[Example, Scores]], head: str
              ) -> list[tuple[float, float, float, str]]:
    """(label, weight, score, family) of the scored examples that have a ``head`` label."""
    rows = []
    for example, scores in scored:
        label = example.label(head)
        if label is not None:
            rows.append((label, example.weight(head), getattr(scores, head), example.family))
    return rows


def _cell(row: dict[str, Any] | None, key: str) -> str:
    if row is None:
        return "no label"
    if row[key] is None:
        return "one class"
    return f"{row[key]:.3f}"


def format_markdown(result: LodoResult, target_auc: float = 0.8) -> str:
    """The leave-one-dataset-out table in Markdown: a row per held-out family (its prompts,
    then AUC and Brier score per head), then the pooled row. ``one class``: the family's label
    is constant, so AUC is undefined; ``no label``: the family has no label for that head.
    AUCs below ``target_auc`` are marked with an asterisk, and with a dagger where no score
    could reach it (``auc_ceiling`` below ``target_auc``: the family's labels are soft)."""
    head_cols = " | ".join(f"{h} AUC | {h} Brier" for h in HEADS)
    lines = [f"| held-out dataset | prompts | {head_cols} |",
             "| --- | ---: |" + " ---: | ---: |" * len(HEADS)]

    def auc(row: dict[str, Any] | None) -> str:
        text = _cell(row, "auc")
        if row is not None and row["auc"] is not None and row["auc"] < target_auc:
            text += "*"
            if (row.get("auc_ceiling") or 1.0) < target_auc:
                text += "\u2020"
        return text

    for family in result.families:
        rows = [result.by_family[h][family] for h in HEADS]
        n = max(int(r["n"]) for r in rows if r is not None) if any(rows) else 0
        cells = " | ".join(f"{auc(r)} | {_cell(r, 'brier')}" for r in rows)
        lines.append(f"| {family} | {n:,} | {cells} |")
    for name, pooled in (("pooled", result.pooled),
                         ("pooled, families weighted equally", result.pooled_balanced)):
        rows = [pooled[h] for h in HEADS]
        n = max(int(r["n"]) for r in rows if r is not None)
        cells = " | ".join(f"**{auc(r)}** | **{_cell(r, 'brier')}**" for r in rows)
        lines.append(f"| **{name}** | {n:,} | {cells} |")
    return "\n".join(lines)


def format_calibration(result: LodoResult) -> str:
    """Plain text: per held-out family and head, the mean label against the mean score
    (weighted), the check that matters where a family's label is constant."""
    lines = [f"  {'held-out dataset':22} " + " ".join(f"{h + ' label/score':>24}"
                                                      for h in HEADS)]
    for family in result.families:
        cells = []
        for head in HEADS:
            row = result.by_family[head][family]
            cells.append(f"{'-':>24}" if row is None else
                         f"{row['mean_label']:>15.3f} /{row['mean_score']:>6.3f}")
        lines.append(f"  {family:22} " + " ".join(cells))
    return "\n".join(lines)


def unmet(result: LodoResult, target_auc: float = 0.8) -> list[str]:
    """Where the target is not met: "head on family (AUC x)" for each AUC below
    ``target_auc`` (with the labels' ``auc_ceiling`` where even that is below it), and "head
    on family (one class)" where AUC is undefined."""
    out = []
    for head in HEADS:
        for family in result.families:
            row = result.by_family[head][family]
            if row is None:
                continue
            if row["auc"] is None:
                out.append(f"{head} on {family} (one class)")
            elif row["auc"] < target_auc:
                ceiling = row.get("auc_ceiling")
                out.append(f"{head} on {family} (AUC {row['auc']:.3f}"
                           + (f"; no score can reach {target_auc:g} here: ceiling "
                              f"{ceiling:.3f})" if ceiling is not None and ceiling < target_auc
                              else ")"))
    return out
