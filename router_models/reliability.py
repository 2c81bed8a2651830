"""How well a score's probabilities fit weighted fractional labels: AUC, Brier score, expected
calibration error, by dataset and overall.

A label f in [0, 1] of weight w counts as a positive of weight w x f and a negative of weight
w x (1 - f), the usual reading of soft labels by logistic regression; every figure below is
computed on that expansion with scikit-learn's weighted metrics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score

from router_models.classifier import HEADS
from router_models.plan import Scores
from router_models.training_data import Example


def expand(labels: Sequence[float | None], weights: Sequence[float] | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, y, w): for each labelled row i with label f and weight v, a positive row of
    weight v x f and a negative row of weight v x (1 - f) (rows of weight 0 are dropped);
    index maps each expanded row back to i."""
    index, y, w = [], [], []
    for i, f in enumerate(labels):
        if f is None:
            continue
        v = 1.0 if weights is None else float(weights[i])
        for target, share in ((1, f), (0, 1.0 - f)):
            if share * v > 0:
                index.append(i)
                y.append(target)
                w.append(share * v)
    return np.array(index, int), np.array(y, int), np.array(w, float)


def metrics(labels: Sequence[float], probs: Sequence[float],
            weights: Sequence[float] | None = None) -> dict[str, float | None]:
    """Reliability of ``probs`` against ``labels`` (same length; weights default 1).

    Returns:
        n (labelled prompts), weight (their total weight), mean_label and mean_score
        (weighted), brier, brier_constant (a constant predictor at the base rate), auc (None
        when only one class has weight), auc_ceiling (the AUC of the labels themselves as
        scores: the most any score can reach; None with auc) and ece (10 equal-width bins),
        rounded to 4 places.
    """
    index, y, w = expand(labels, weights)
    p = np.asarray(probs, float)[index]
    total = float(w.sum())
    base = float(np.average(y, weights=w)) if total > 0 else 0.0
    out: dict[str, float | None] = {
        "n": float(len(labels)), "weight": total, "mean_label": base,
        "mean_score": float(np.average(p, weights=w)) if total > 0 else 0.0}
    out["brier"] = float(brier_score_loss(y, p, sample_weight=w)) if total > 0 else None
    out["brier_constant"] = (float(brier_score_loss(y, np.full(len(y), base), sample_weight=w))
                             if total > 0 else None)
    out["auc"] = float(roc_auc_score(y, p, sample_weight=w)) if len(set(y)) == 2 else None
    # The best AUC any score can reach on these labels: ranking by the label itself orders
    # every pair best (f_i (1 - f_j) >= f_j (1 - f_i) when f_i >= f_j). 1 for hard labels;
    # below 1 where soft labels (a share of samples, a corrected probability) tie or overlap.
    out["auc_ceiling"] = (float(roc_auc_score(y, np.asarray(labels, float)[index],
                                              sample_weight=w))
                          if len(set(y)) == 2 else None)
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(np.average(y[bins == b], weights=w[bins == b])
                  - np.average(p[bins == b], weights=w[bins == b])) * w[bins == b].sum()
              for b in range(10) if w[bins == b].sum() > 0) / total if total > 0 else 0.0
    out["ece"] = float(ece)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def evaluate(examples: Sequence[Example], scores: Sequence[Scores], key: str = "dataset"
             ) -> dict[str, Any]:
    """Reliability per head, overall and by ``key`` (an ``Example`` attribute: ``dataset``
    or ``family``): head -> {"overall": metrics, "by_<key>": {name: metrics}}."""
    out: dict[str, Any] = {}
    for head in HEADS:
        rows: list[tuple[float, float, float, str]] = []
        for e, s in zip(examples, scores, strict=True):
            label = e.label(head)
            if label is not None:
                rows.append((label, e.weight(head), getattr(s, head), getattr(e, key)))
        groups: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for label, weight, prob, group in rows:
            groups[group].append((label, weight, prob))
        out[head] = {
            "overall": metrics([r[0] for r in rows], [r[2] for r in rows],
                               [r[1] for r in rows]),
            f"by_{key}": {g: metrics([a for a, _, _ in v], [p for _, _, p in v],
                                     [w for _, w, _ in v])
                          for g, v in sorted(groups.items())},
        }
    return out
