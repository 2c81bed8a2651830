"""The figures of an evaluation, from its per-item records: accuracy and tokens per family,
strategy and budget; the winner at each budget; the per-prompt oracle envelope; policy points.

Intervals are 95%: Wilson for an accuracy (statsmodels ``proportion_confint``); for the
difference between two strategies on the same items, a paired percentile bootstrap over items
(scipy ``bootstrap``, 2,000 resamples, fixed seed) with McNemar's exact test for its p-value
(statsmodels ``mcnemar``). Records with an ``error`` are counted apart and left out of every
figure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

BOOTSTRAP_RESAMPLES = 2000
ALL = "all"


@dataclass(frozen=True)
class Cell:
    """One (family, strategy, budget): items, accuracy with its Wilson 95% interval, mean
    completion tokens (all upstream calls) with a normal 95% interval, errors, and
    ``ran_as_asked``: the items the gateway ran with the strategy asked (its reply's
    ``router.strategy``; a vote whose samples cannot finish in the budget runs one chain), or
    None when no reply says (client mode, policies)."""

    family: str
    strategy: str
    budget_tokens: int | None
    n: int
    correct: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    mean_tokens: float
    mean_tokens_ci95: tuple[float, float]
    errors: int
    ran_as_asked: int | None = None


@dataclass(frozen=True)
class Comparison:
    """The winner at one (family, budget): the best accuracy (fewer mean tokens breaks a
    tie), the runner-up, and the paired difference (winner - runner-up, in accuracy) on the
    items both answered, with its bootstrap 95% interval and McNemar p-value; ``significant``
    when that interval excludes 0 and p < 0.05."""

    family: str
    budget_tokens: int
    winner: str
    runner_up: str | None
    n_paired: int
    difference: float | None
    difference_ci95: tuple[float, float] | None
    p_value: float | None
    significant: bool


@dataclass(frozen=True)
class EnvelopePoint:
    """The per-prompt oracle at budget cap ``budget_tokens``: per item, the cheapest correct
    configuration among those with budget <= cap (else the cheapest one); its accuracy and
    mean completion tokens."""

    family: str
    budget_tokens: int
    n: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    mean_tokens: float


def wilson(correct: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval for ``correct`` successes of ``n`` (0..1; (0, 1) when n=0)."""
    if n == 0:
        return (0.0, 1.0)
    low, high = proportion_confint(correct, n, alpha=0.05, method="wilson")
    return (float(low), float(high))


def _mean_ci(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    array = np.asarray(values, dtype=float)
    mean = float(array.mean()) if len(array) else 0.0
    if len(array) < 2:
        return mean, (mean, mean)
    half = 1.96 * float(array.std(ddof=1)) / np.sqrt(len(array))
    return mean, (mean - half, mean + half)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, tuple[float, float],
                                                                       float]:
    """Mean of a - b over paired outcomes, its paired percentile bootstrap 95% interval, and
    McNemar's exact p-value. Raises ValueError when the lengths differ or are 0."""
    if len(a) != len(b) or not a:
        raise ValueError("paired outcomes must have the same, non-zero length")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = x - y
    mean = float(diff.mean())
    if np.ptp(diff) == 0:  # every pair differs alike: the bootstrap is degenerate
        ci = (mean, mean)
    else:
        result = stats.bootstrap((x, y), lambda u, v, axis: np.mean(u - v, axis=axis),
                                 paired=True, vectorized=True, method="percentile",
                                 n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                                 rng=np.random.default_rng(0))
        ci = (float(result.confidence_interval.low), float(result.confidence_interval.high))
    only_a = int(np.sum((x == 1) & (y == 0)))
    only_b = int(np.sum((x == 0) & (y == 1)))
    both = int(np.sum((x == 1) & (y == 1)))
    neither = int(np.sum((x == 0) & (y == 0)))
    p = float(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    return mean, ci, p


def _ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r.get("error")]


def _families(records: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({r["family"] for r in records})


def cells(records: Sequence[dict[str, Any]], with_all: bool = True) -> list[Cell]:
    """A ``Cell`` per (family, strategy, budget), plus family ``all`` when ``with_all``."""
    groups: dict[tuple[str, str, int | None], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["family"], r["strategy"], r["budget_tokens"])].append(r)
        if with_all:
            groups[(ALL, r["strategy"], r["budget_tokens"])].append(r)
    out = []
    for (family, strategy, budget), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        ok = _ok(rows)
        correct = sum(bool(r["correct"]) for r in ok)
        mean, ci = _mean_ci([r["completion_tokens"] for r in ok])
        ran = [(r.get("router") or {}).get("strategy") for r in ok]
        out.append(Cell(family, strategy, budget, len(ok), correct,
                        correct / len(ok) if ok else 0.0, wilson(correct, len(ok)), mean, ci,
                        len(rows) - len(ok),
                        sum(s == strategy for s in ran) if budget is not None and any(ran)
                        else None))
    return out


def comparisons(records: Sequence[dict[str, Any]], with_all: bool = True) -> list[Comparison]:
    """The winner per (family, budget) among strategies (policy rows excluded)."""
    ok = [r for r in _ok(records) if r["budget_tokens"] is not None]
    by: dict[tuple[str, int], dict[str, dict[tuple[str, str], bool]]] = defaultdict(
        lambda: defaultdict(dict))
    tokens: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for r in ok:
        families = [r["family"], ALL] if with_all else [r["family"]]
        for family in families:
            by[(family, r["budget_tokens"])][r["strategy"]][(r["suite"], r["item_id"])] = \
                bool(r["correct"])
            tokens[(family, r["budget_tokens"], r["strategy"])].append(r["completion_tokens"])
    out = []
    for (family, budget), per_strategy in sorted(by.items()):
        ranked = sorted(per_strategy, key=lambda s: (
            -np.mean(list(per_strategy[s].values())),
            float(np.mean(tokens[(family, budget, s)])), s))
        winner = ranked[0]
        if len(ranked) == 1:
            out.append(Comparison(family, budget, winner, None, 0, None, None, None, False))
            continue
        runner = ranked[1]
        shared = sorted(set(per_strategy[winner]) & set(per_strategy[runner]))
        if not shared:
            out.append(Comparison(family, budget, winner, runner, 0, None, None, None, False))
            continue
        a = [per_strategy[winner][k] for k in shared]
        b = [per_strategy[runner][k] for k in shared]
        diff, ci, p = paired_difference(a, b)
        out.append(Comparison(family, budget, winner, runner, len(shared), diff, ci, p,
                              ci[0] > 0 and p < 0.05))
    return out


def envelope(records: Sequence[dict[str, Any]], with_all: bool = True) -> list[EnvelopePoint]:
    """The per-prompt oracle envelope per family, one point per budget cap."""
    ok = [r for r in _ok(records) if r["budget_tokens"] is not None]
    budgets = sorted({r["budget_tokens"] for r in ok})
    per_item: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        per_item[(r["suite"], r["item_id"])].append(r)
    out = []
    families = _families(ok) + ([ALL] if with_all and ok else [])
    for family in families:
        items = [rows for rows in per_item.values()
                 if family == ALL or rows[0]["family"] == family]
        for cap in budgets:
            right, spent, n = 0, [], 0
            for rows in items:
                allowed = [r for r in rows if r["budget_tokens"] <= cap]
                if not allowed:
                    continue
                n += 1
                good = [r for r in allowed if r["correct"]]
                pool = good or allowed
                spent.append(min(r["completion_tokens"] for r in pool))
                right += bool(good)
            if n:
                out.append(EnvelopePoint(family, cap, n, right / n, wilson(right, n),
                                         float(np.mean(spent))))
    return out


def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Everything above as one JSON-ready mapping (``summary.json``)."""
    ok = _ok(records)
    return {
        "records": len(records),
        "errors": len(records) - len(ok),
        "items": len({(r["suite"], r["item_id"]) for r in records}),
        "simulated": any(r.get("simulated") for r in records),
        "cells": [asdict(c) for c in cells(records)],
        "comparisons": [asdict(c) for c in comparisons(records)],
        "envelope": [asdict(p) for p in envelope(records)],
    }
