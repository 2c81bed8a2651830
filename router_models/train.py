"""Offline training: fit the classifier on the shared benchmark data, evaluate it on held-out
data, set up the learned policy, and write the artifacts; or re-fit from feedback records.

``train`` is what ``ttc-router train`` runs. The same data and seed give the same artifact
bytes: examples come in a fixed order, splits are seeded hashes of the text, the solvers are
deterministic and run on one BLAS thread, and the files are written deterministically.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from router_models.classifier import (
    ARTIFACT_VERSION,
    DEFAULT_ARTIFACT_DIR,
    HEADS,
    Classifier,
    Head,
    from_arrays,
)
from router_models.features import N_DENSE, N_HASH, Features, extract
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies import LearnedPolicy, Policy, RulesPolicy
from router_models.training_data import (
    DEFAULT_DATA_DIR,
    Example,
    data_hash,
    load_examples,
    split_of,
)

C_GRID = (0.3, 1.0, 3.0)  # inverse L2 strength tried per head, picked on calibration log loss
TARGET_TOKENS = 1024  # the shipped learned policy's mean budget per request
REFERENCE_PER_FAMILY = 40  # held-out prompts per family in the learned policy's reference set


@dataclass(frozen=True)
class FeedbackRecord:
    """One logged request with feedback: the messages (or prompt text), the plan that ran,
    whether it was correct (True/False or a score in [0, 1]), the scores logged with the
    decision (None: score ``messages`` again with the current classifier), and the completion
    tokens it spent (None when unknown)."""

    messages: Sequence[Any] | str
    plan: Plan
    correct: bool | float
    scores: Scores | None = None
    spent_tokens: int | None = None


@dataclass
class TrainResult:
    """What ``train`` produced: the classifier, the learned policy, and the metrics
    (``classifier.metadata["metrics"]``) and chosen-strategy tables it printed."""

    classifier: Classifier
    learned: LearnedPolicy
    strategy_table: dict[str, dict[str, dict[str, int]]]


# -- fitting ----------------------------------------------------------------------------------

def design_matrix(features: Sequence[Features], mean: np.ndarray, scale: np.ndarray
                  ) -> sp.csr_matrix:
    """(n, N_DENSE + N_HASH) sparse matrix: standardised dense features, then n-grams."""
    dense = (np.array([f.dense for f in features]) - mean) / scale
    rows = np.repeat(np.arange(len(features)), [len(f.hash_indices) for f in features])
    cols = np.concatenate([f.hash_indices for f in features] + [np.zeros(0, np.int64)])
    vals = np.concatenate([f.hash_values for f in features] + [np.zeros(0)])
    hashed = sp.csr_matrix((vals, (rows, cols)), shape=(len(features), N_HASH))
    return sp.hstack([sp.csr_matrix(dense), hashed], format="csr")


def _expand(labels: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # A fractional label f becomes a positive row of weight f and a negative of weight 1 - f.
    index, y, w = [], [], []
    for i, f in enumerate(labels):
        if f is None:
            continue
        for target, weight in ((1, f), (0, 1.0 - f)):
            if weight > 0:
                index.append(i)
                y.append(target)
                w.append(weight)
    return np.array(index, int), np.array(y, int), np.array(w, float)


def fit_head(x_train: sp.csr_matrix, train_labels: Sequence[float | None],
             x_calib: sp.csr_matrix, calib_labels: Sequence[float | None],
             mean: np.ndarray, scale: np.ndarray, seed: int) -> tuple[Head, float]:
    """Logistic regression (C picked from ``C_GRID`` on calibration log loss), then isotonic
    calibration on the calibration split. Returns the head and the chosen C.

    Raises:
        ValueError: a split lacks one of the two classes.
    """
    ti, ty, tw = _expand(train_labels)
    ci, cy, cw = _expand(calib_labels)
    if len(set(ty)) < 2 or len(set(cy)) < 2:
        raise ValueError("a head needs both classes in its train and calibration splits")
    best: tuple[float, float, LogisticRegression] | None = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=3000, random_state=seed)
        model.fit(x_train[ti], ty, sample_weight=tw)
        loss = log_loss(cy, model.predict_proba(x_calib[ci])[:, 1], sample_weight=cw)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, c, model)
    assert best is not None
    _, c, model = best
    coef = model.coef_[0]
    w_dense = coef[:N_DENSE] / scale
    intercept = float(model.intercept_[0] - np.sum(coef[:N_DENSE] * mean / scale))
    # Calibrate the float32-rounded model, since that is what ships.
    w_dense32 = w_dense.astype(np.float32).astype(np.float64)
    w_hash32 = coef[N_DENSE:].astype(np.float32).astype(np.float64)
    intercept32 = float(np.float32(intercept))
    raw_calib = x_calib[ci]
    dense_raw = raw_calib[:, :N_DENSE].toarray() * scale + mean
    decision = dense_raw @ w_dense32 + raw_calib[:, N_DENSE:] @ w_hash32 + intercept32
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(decision, cy, sample_weight=cw)
    return Head(w_dense32, w_hash32, intercept32, iso.X_thresholds_.astype(np.float64),
                iso.y_thresholds_.astype(np.float64)), c


def fit_classifier(examples: Sequence[Example], seed: int = 0,
                   features: Sequence[Features] | None = None) -> Classifier:
    """Fit the three heads on the ``train`` split, calibrate on ``calibration``, and record
    held-out metrics on ``test`` in the metadata (see ``evaluate``).

    Raises:
        ValueError: too little data for a head (a split lacks a class).
    """
    feats = list(features) if features is not None else [extract(e.text) for e in examples]
    splits = [split_of(e.text, seed) for e in examples]
    train_idx = [i for i, s in enumerate(splits) if s == "train"]
    calib_idx = [i for i, s in enumerate(splits) if s == "calibration"]
    test_idx = [i for i, s in enumerate(splits) if s == "test"]
    dense = np.array([feats[i].dense for i in train_idx])
    mean = dense.mean(axis=0)
    scale = dense.std(axis=0)
    scale[scale == 0] = 1.0
    x_train = design_matrix([feats[i] for i in train_idx], mean, scale)
    x_calib = design_matrix([feats[i] for i in calib_idx], mean, scale)
    heads: dict[str, Head] = {}
    chosen_c: dict[str, float] = {}
    with threadpool_limits(limits=1):
        for name in HEADS:
            heads[name], chosen_c[name] = fit_head(
                x_train, [getattr(examples[i], name) for i in train_idx],
                x_calib, [getattr(examples[i], name) for i in calib_idx], mean, scale, seed)
    # Evaluate exactly what ships: the float32 arrays of the artifact.
    classifier = Classifier(from_arrays(Classifier(heads).arrays()))
    test = [examples[i] for i in test_idx]
    test_scores = [classifier.score_features(feats[i]) for i in test_idx]
    classifier.metadata = {
        "version": ARTIFACT_VERSION, "seed": seed, "data_hash": data_hash(examples),
        "examples": {"train": len(train_idx), "calibration": len(calib_idx),
                     "test": len(test_idx)},
        "regularisation_c": chosen_c,
        "libraries": {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "metrics": evaluate(test, test_scores),
    }
    return classifier


# -- evaluation -------------------------------------------------------------------------------

def _metrics(labels: Sequence[float], probs: Sequence[float]) -> dict[str, float | None]:
    index, y, w = _expand(labels)
    p = np.asarray(probs, float)[index]
    out: dict[str, float | None] = {"n": float(len(labels)),
                                    "mean_label": float(np.average(y, weights=w)),
                                    "mean_score": float(np.average(p, weights=w))}
    out["brier"] = float(brier_score_loss(y, p, sample_weight=w))
    base = float(np.average(y, weights=w))
    out["brier_constant"] = float(brier_score_loss(y, np.full(len(y), base), sample_weight=w))
    out["auc"] = float(roc_auc_score(y, p, sample_weight=w)) if len(set(y)) == 2 else None
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(np.average(y[bins == b], weights=w[bins == b])
                  - np.average(p[bins == b], weights=w[bins == b])) * w[bins == b].sum()
              for b in range(10) if w[bins == b].sum() > 0) / w.sum()
    out["ece"] = float(ece)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def evaluate(examples: Sequence[Example], scores: Sequence[Scores]) -> dict[str, Any]:
    """Held-out reliability per head, overall and by dataset: n, mean label and score, Brier
    score (and that of a constant predictor at the base rate), AUC (None when a dataset has
    one class only) and expected calibration error over 10 bins."""
    out: dict[str, Any] = {}
    for head in HEADS:
        rows = [(getattr(e, head), getattr(s, head), e.dataset)
                for e, s in zip(examples, scores, strict=True) if getattr(e, head) is not None]
        by_dataset: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for label, prob, dataset in rows:
            by_dataset[dataset].append((label, prob))
        out[head] = {
            "overall": _metrics([r[0] for r in rows], [r[1] for r in rows]),
            "by_dataset": {d: _metrics([a for a, _ in v], [b for _, b in v])
                           for d, v in sorted(by_dataset.items())},
        }
    return out


def strategy_table(examples: Sequence[Example], scores: Sequence[Scores],
                   policies: Sequence[Policy]) -> dict[str, dict[str, dict[str, int]]]:
    """policy name -> family -> strategy -> count of the plan each policy would choose (the
    learned policy's greedy choice, without exploration)."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for policy in policies:
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for e, s in zip(examples, scores, strict=True):
            if isinstance(policy, LearnedPolicy):
                strategy = policy.sized(policy.strategy_for(s), s).strategy
            else:
                strategy = policy.decide(s).plan.strategy
            counts[e.family][strategy] += 1
        table[policy.name] = {f: dict(sorted(c.items())) for f, c in sorted(counts.items())}
    return table


def reference_scores(examples: Sequence[Example], scores: Sequence[Scores],
                     per_family: int = REFERENCE_PER_FAMILY) -> list[Scores]:
    """Up to ``per_family`` held-out prompts' scores per family, in order: the learned
    policy's initial reference set for solving lambda."""
    taken: Counter[str] = Counter()
    out = []
    for e, s in zip(examples, scores, strict=True):
        if taken[e.family] < per_family:
            taken[e.family] += 1
            out.append(s)
    return out


# -- the command's work -----------------------------------------------------------------------

def train(data_dir: Path = DEFAULT_DATA_DIR, out_dir: Path = DEFAULT_ARTIFACT_DIR, *,
          seed: int = 0, limit_per_dataset: int | None = None, n_generated: int = 1500,
          target_tokens: float = TARGET_TOKENS) -> TrainResult:
    """Fit and write ``classifier.npz``, ``classifier.json`` and ``learned.json`` to
    ``out_dir``.

    Raises:
        training_data.DataMissingError: the shared data is absent.
        ValueError: too little data for a head.
    """
    examples = load_examples(data_dir, seed=seed, limit_per_dataset=limit_per_dataset,
                             n_generated=n_generated)
    features = [extract(e.text) for e in examples]
    classifier = fit_classifier(examples, seed, features)
    test = [(e, f) for e, f in zip(examples, features, strict=True)
            if split_of(e.text, seed) == "test"]
    test_examples = [e for e, _ in test]
    test_scores = [classifier.score_features(f) for _, f in test]
    learned = LearnedPolicy(target_tokens=target_tokens)
    for s in reference_scores(test_examples, test_scores):
        learned.add_reference(s)
    learned.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save(out_dir)
    learned.save(out_dir / "learned.json")
    table = strategy_table(test_examples, test_scores, [RulesPolicy.from_yaml(), learned])
    return TrainResult(classifier, learned, table)


def train_from_records(records: Iterable[FeedbackRecord], classifier: Classifier,
                       learned: LearnedPolicy, out_dir: Path) -> dict[str, Any]:
    """Re-fit the learned policy to a deployment's own feedback and write it to
    ``out_dir/learned.json`` (the classifier is copied alongside, unchanged).

    Each record (its logged scores, else its messages scored by ``classifier``) is replayed,
    in order, as one online update of the plan that ran. Returns counts: records, correct,
    and per strategy.

    Raises:
        ValueError: a record's ``correct`` is not a bool or a score in [0, 1].
    """
    counts: Counter[str] = Counter()
    correct = 0.0
    for record in records:
        scores = record.scores or classifier.score(record.messages)
        learned.add_reference(scores)
        learned.update(scores, record.plan, record.correct, spent_tokens=record.spent_tokens)
        counts[record.plan.strategy] += 1
        correct += float(record.correct)
    learned.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save(out_dir)
    learned.save(out_dir / "learned.json")
    total = sum(counts.values())
    return {"records": total, "correct": correct,
            "by_strategy": {s: counts[s] for s in STRATEGIES if counts[s]}}


# -- printing ---------------------------------------------------------------------------------

def format_metrics(metrics: dict[str, Any]) -> str:
    """The held-out metrics as plain-text tables (one per head, a row per dataset)."""
    lines = []
    for head, m in metrics.items():
        lines.append(f"\n{head}: held-out reliability (Brier lower is better; constant = "
                     "base-rate predictor)")
        lines.append(f"  {'dataset':36} {'n':>6} {'label':>6} {'score':>6} {'AUC':>6} "
                     f"{'Brier':>6} {'const':>6} {'ECE':>6}")
        for name, row in [("ALL", m["overall"]), *m["by_dataset"].items()]:
            auc = "-" if row["auc"] is None else f"{row['auc']:.3f}"
            lines.append(f"  {name:36} {int(row['n']):>6} {row['mean_label']:>6.3f} "
                         f"{row['mean_score']:>6.3f} {auc:>6} {row['brier']:>6.3f} "
                         f"{row['brier_constant']:>6.3f} {row['ece']:>6.3f}")
    return "\n".join(lines)


def format_strategy_table(table: dict[str, dict[str, dict[str, int]]]) -> str:
    """Chosen strategy by task family, one block per policy (counts of held-out prompts)."""
    lines = []
    for policy, rows in table.items():
        lines.append(f"\nchosen strategy by task family: {policy} (held-out prompts)")
        lines.append(f"  {'family':22} " + " ".join(f"{s:>13}" for s in STRATEGIES))
        for family, counts in rows.items():
            lines.append(f"  {family:22} " + " ".join(f"{counts.get(s, 0):>13}"
                                                      for s in STRATEGIES))
    return "\n".join(lines)


def file_digest(path: Path) -> str:
    """SHA-256 of a file (for reproducibility checks)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary(result: TrainResult) -> str:
    """Everything ``ttc-router train`` prints after fitting."""
    meta = result.classifier.metadata
    head = (f"training data sha256 {meta['data_hash']}, seed {meta['seed']}, examples "
            f"{json.dumps(meta['examples'])}, C {json.dumps(meta['regularisation_c'])}")
    tail = (f"\nlearned policy: target {result.learned.target_tokens:g} tokens per request, "
            f"difficulty scale {result.learned.scale:.3g} over "
            f"{len(result.learned.reference)} reference prompts")
    return head + format_metrics(meta["metrics"]) + "\n" + format_strategy_table(
        result.strategy_table) + tail
