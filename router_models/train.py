"""Offline training: fit the classifier on the shared benchmark data, evaluate it on held-out
data, set up the learned policy, and write the artifacts; or re-fit from feedback records.

``train`` is what ``ttc-router train`` runs. The same data and seed give the same artifact
bytes: examples come in a fixed order, splits are seeded hashes of the text, the solvers are
deterministic and run on one BLAS thread, and the files are written deterministically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits

from router_models.classifier import (
    ARTIFACT_VERSION,
    DEFAULT_ARTIFACT_DIR,
    HEADS,
    Classifier,
    Head,
    from_arrays,
)
from router_models.features import N_DENSE, N_HASH, Features, extract, fingerprint
from router_models.plan import STRATEGIES, Plan, Scores
from router_models.policies import LearnedPolicy, Policy, RulesPolicy
from router_models.reliability import evaluate, expand
from router_models.training_data import (
    DEFAULT_DATA_DIR,
    Example,
    data_hash,
    load_examples,
    split_of,
)

C_GRID = (0.3, 1.0, 3.0)  # inverse L2 strength tried per head, picked on calibration log loss
# The n-grams enter the design scaled by HASH_SCALE, which makes their L2 penalty 1 /
# HASH_SCALE**2 times that of the hand-made cues: n-grams recognise a dataset's wording, the
# cues carry over to prompts of a kind never seen. Chosen by the leave-one-dataset-out
# evaluation (README).
HASH_SCALE = 0.3
# Each family's labels weigh in at most as FAMILY_CAP prompts (per head), so that MMLU's
# 14,042 prompts do not decide what "difficult" means for every other kind of prompt.
FAMILY_CAP = 2000
PLATT_KNOTS = 129  # knots tabulating each head's sigmoid calibration (numpy.interp between)
# The learned policy's mean budget per request in the strategy table train reports: the
# gateway's default (``learned_target_tokens``), so the table shows what `auto` does as shipped.
TARGET_TOKENS = 512
REFERENCE_PER_FAMILY = 40  # held-out prompts per family in the learned policy's reference set


@dataclass(frozen=True)
class FeedbackRecord:
    """One logged request with feedback: the messages (or prompt text), the plan that ran,
    whether it was correct (True/False or a score in [0, 1]), the scores logged with the
    decision (None: score ``messages`` again with the current classifier), and the completion
    tokens it spent (None when unknown), and what identifies the prompt
    (``router_models.prompt.prompt_key``; None when the log has no key: then every record
    counts as a new prompt)."""

    messages: Sequence[Any] | str
    plan: Plan
    correct: bool | float
    scores: Scores | None = None
    spent_tokens: int | None = None
    prompt_key: str | None = None


@dataclass
class TrainResult:
    """What ``train`` produced: the classifier, the learned policy, the metrics
    (``classifier.metadata["metrics"]``) and chosen-strategy tables it printed, and the
    examples with their features (for ``router_models.lodo``)."""

    classifier: Classifier
    learned: LearnedPolicy
    strategy_table: dict[str, dict[str, dict[str, int]]]
    examples: list[Example] = dataclasses.field(default_factory=list)
    features: list[Features] = dataclasses.field(default_factory=list)


# -- fitting ----------------------------------------------------------------------------------

def design_matrix(features: Sequence[Features], mean: np.ndarray, scale: np.ndarray,
                  hash_scale: float = HASH_SCALE) -> sp.csr_matrix:
    """(n, N_DENSE + N_HASH) sparse matrix: standardised dense features, then the n-grams
    times ``hash_scale``."""
    dense = (np.array([f.dense for f in features]) - mean) / scale
    rows = np.repeat(np.arange(len(features)), [len(f.hash_indices) for f in features])
    cols = np.concatenate([f.hash_indices for f in features] + [np.zeros(0, np.int64)])
    vals = np.concatenate([f.hash_values for f in features] + [np.zeros(0)]) * hash_scale
    hashed = sp.csr_matrix((vals, (rows, cols)), shape=(len(features), N_HASH))
    return sp.hstack([sp.csr_matrix(dense), hashed], format="csr")


def fit_head(x_train: sp.csr_matrix, train_labels: Sequence[float | None],
             train_weights: Sequence[float], x_calib: sp.csr_matrix,
             calib_labels: Sequence[float | None], calib_weights: Sequence[float],
             mean: np.ndarray, scale: np.ndarray, seed: int,
             c_grid: Sequence[float] = C_GRID, hash_scale: float = HASH_SCALE
             ) -> tuple[Head, float]:
    """Logistic regression on weighted soft labels (``reliability.expand``), C picked from
    ``c_grid`` on calibration log loss, then Platt scaling on the calibration split.
    Returns the head and the chosen C.

    Raises:
        ValueError: a split lacks one of the two classes.
    """
    ti, ty, tw = expand(train_labels, train_weights)
    ci, cy, cw = expand(calib_labels, calib_weights)
    if len(set(ty)) < 2 or len(set(cy)) < 2:
        raise ValueError("a head needs both classes in its train and calibration splits")
    best: tuple[float, float, LogisticRegression] | None = None
    for c in c_grid:
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
    w_hash32 = (coef[N_DENSE:] * hash_scale).astype(np.float32).astype(np.float64)
    intercept32 = float(np.float32(intercept))
    raw_calib = x_calib[ci]
    dense_raw = raw_calib[:, :N_DENSE].toarray() * scale + mean
    hashed_raw = raw_calib[:, N_DENSE:] / hash_scale
    decision = dense_raw @ w_dense32 + hashed_raw @ w_hash32 + intercept32
    xs, ys = platt_knots(decision, cy, cw)
    return Head(w_dense32, w_hash32, intercept32, xs, ys), c


def platt_knots(decision: np.ndarray, y: np.ndarray, weights: np.ndarray,
                n_knots: int = PLATT_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """Platt scaling (Platt 1999): a one-feature logistic regression of the labels on the
    linear score, tabulated as ``n_knots`` (x, sigmoid) pairs over the calibration scores'
    range widened by its own width on each side (at least 1), for ``numpy.interp``.

    Platt rather than isotonic regression: isotonic steps map every score past the last
    calibration score to one value, so a kind of prompt never seen in training, whose scores
    fall outside that range, is ranked as a tie and read as certain; the sigmoid keeps the
    ranking (measured on the leave-one-dataset-out folds with MMLU cut to 3,000 prompts: the
    pooled AUC of ``search``, families weighted equally, rose from 0.68 to 0.80).
    """
    platt = LogisticRegression(C=1e6, max_iter=1000)
    platt.fit(decision.reshape(-1, 1), y, sample_weight=weights)
    lo, hi = float(decision.min()), float(decision.max())
    pad = max(1.0, hi - lo)
    xs = np.linspace(lo - pad, hi + pad, n_knots)
    ys = 1.0 / (1.0 + np.exp(-(platt.coef_[0, 0] * xs + platt.intercept_[0])))
    return xs, ys


def standardisation(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, constant) of the (n, N_DENSE) dense features: a column that is constant
    up to rounding gets scale 1 and is flagged, so it cannot be blown up into a huge weight
    (the std of identical floats can be 1e-16 rather than 0)."""
    mean = dense.mean(axis=0)
    scale = dense.std(axis=0)
    constant = scale <= 1e-9 * np.maximum(1.0, np.abs(mean))
    scale[constant] = 1.0
    return mean, scale, constant


def duplicate_columns(dense: np.ndarray) -> dict[int, int]:
    """column -> the first earlier column equal to it on every row, for the (n, N_DENSE)
    dense features (constant columns excluded: ``standardisation`` handles them)."""
    twins: dict[int, int] = {}
    for j in range(dense.shape[1]):
        if np.ptp(dense[:, j]) == 0:
            continue
        for i in range(j):
            if i not in twins and np.array_equal(dense[:, i], dense[:, j]):
                twins[j] = i
                break
    return twins


def family_weights(examples: Sequence[Example], index: Sequence[int], head: str,
                   cap: float | None) -> list[float]:
    """Each indexed example's label weight for ``head``, scaled so that no family's labelled
    prompts count for more than ``cap`` prompts (None: unscaled)."""
    weights = [examples[i].weight(head) for i in index]
    if cap is None:
        return weights
    counts = Counter(examples[i].family for i in index if examples[i].label(head) is not None)
    return [w * min(1.0, cap / counts[examples[i].family]) if counts[examples[i].family]
            else w for w, i in zip(weights, index, strict=True)]


def fit_heads(examples: Sequence[Example], features: Sequence[Features],
              fit_idx: Sequence[int], calib_idx: Sequence[int], seed: int,
              c_grid: Mapping[str, Sequence[float]] | None = None,
              hash_scale: float = HASH_SCALE, family_cap: float | None = FAMILY_CAP,
              progress: Callable[[str], None] | None = None
              ) -> tuple[Classifier, dict[str, float]]:
    """The three heads fitted on ``fit_idx`` and calibrated on ``calib_idx`` (indices into
    ``examples`` and ``features``), rounded to the float32 arrays that ship.

    Args:
        c_grid: per head, the inverse L2 strengths to try (default ``C_GRID`` for each).
        progress: called with one line as each head is fitted (None: silent).
        hash_scale: the n-grams' scale in the design (``HASH_SCALE``).
        family_cap: the most prompts' weight a family's labels carry per head and split
            (``FAMILY_CAP``; None: no cap).

    Returns:
        (classifier without metadata, the C chosen per head).

    Raises:
        ValueError: a split lacks a class for some head.
    """
    dense_fit = np.array([features[i].dense for i in fit_idx])
    mean, scale, constant = standardisation(dense_fit)
    x_fit = design_matrix([features[i] for i in fit_idx], mean, scale, hash_scale)
    x_calib = design_matrix([features[i] for i in calib_idx], mean, scale, hash_scale)
    heads: dict[str, Head] = {}
    chosen_c: dict[str, float] = {}
    with threadpool_limits(limits=1):
        for number, name in enumerate(HEADS, 1):
            grid = C_GRID if c_grid is None else c_grid[name]
            if progress is not None:
                progress(f"  head {number}/{len(HEADS)}: {name} ({len(fit_idx)} prompts, "
                         f"{len(grid)} regularisation value(s) to try)")
            fit_w = family_weights(examples, fit_idx, name, family_cap)
            calib_w = family_weights(examples, calib_idx, name, family_cap)
            heads[name], chosen_c[name] = fit_head(
                x_fit, [examples[i].label(name) for i in fit_idx], fit_w,
                x_calib, [examples[i].label(name) for i in calib_idx], calib_w,
                mean, scale, seed, grid, hash_scale)
    # A cue that never varies in training (has_system, log_turns: the benchmarks are bare
    # questions) gets no weight, so a request with a system prompt or several turns is scored
    # as its question alone would be.
    # A cue equal to another on every training prompt (log_context_chars is log_chars for a
    # bare question) hands its weight to that one: the same scores on such prompts, and a
    # long conversation before the question does not move them.
    twins = duplicate_columns(dense_fit)
    for head in heads.values():
        head.w_dense[constant] = 0.0
        for column, first in twins.items():
            head.w_dense[first] += head.w_dense[column]
            head.w_dense[column] = 0.0
    # Evaluate exactly what ships: the float32 arrays of the artifact.
    return Classifier(from_arrays(Classifier(heads).arrays())), chosen_c


def fit_classifier(examples: Sequence[Example], seed: int = 0,
                   features: Sequence[Features] | None = None,
                   progress: Callable[[str], None] | None = None) -> Classifier:
    """Fit the three heads on the ``train`` split, calibrate on ``calibration``, and record
    held-out metrics on ``test`` (a random split within datasets, see ``split_of``) in the
    metadata. The leave-one-dataset-out evaluation is ``router_models.lodo``.

    Raises:
        ValueError: too little data for a head (a split lacks a class).
    """
    feats = list(features) if features is not None else [extract(e.text) for e in examples]
    splits = [split_of(e.text, seed) for e in examples]
    train_idx = [i for i, s in enumerate(splits) if s == "train"]
    calib_idx = [i for i, s in enumerate(splits) if s == "calibration"]
    test_idx = [i for i, s in enumerate(splits) if s == "test"]
    classifier, chosen_c = fit_heads(examples, feats, train_idx, calib_idx, seed,
                                     progress=progress)
    test = [examples[i] for i in test_idx]
    test_scores = [classifier.score_features(feats[i]) for i in test_idx]
    classifier.metadata = {
        "version": ARTIFACT_VERSION, "seed": seed, "data_hash": data_hash(examples),
        # The extraction code the weights were fitted on (``features.fingerprint``): a test
        # fails when the shipped weights meet features computed otherwise.
        "features_fingerprint": fingerprint(),
        "examples": {"train": len(train_idx), "calibration": len(calib_idx),
                     "test": len(test_idx)},
        "regularisation_c": chosen_c,
        "libraries": {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "metrics": evaluate(test, test_scores),
    }
    return classifier


# -- evaluation -------------------------------------------------------------------------------

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
          target_tokens: float = TARGET_TOKENS, extra: Iterable[Iterable[Example]] = (),
          provenance: dict[str, Any] | None = None,
          progress: Callable[[str], None] | None = None) -> TrainResult:
    """Fit and write ``classifier.npz`` and ``classifier.json`` to ``out_dir``; ``extra`` adds
    examples to the shared data's (``load_examples``), and ``provenance`` (for example the
    outcome bank's snapshot) is stored in the metadata as given. The learned policy is the prior
    (``router_models.policies.prior``), sized over held-out prompts for the strategy table;
    benchmark data has nothing to teach it, so no ``learned.json`` is written (a deployment's
    learned state under ``DATA_DIR/models`` is left as it is). ``progress`` is called with
    one line per stage (loading, features, each head), which take tens of seconds together.

    Raises:
        training_data.DataMissingError: the shared data is absent.
        ValueError: too little data for a head.
    """
    say = progress or (lambda line: None)
    started = time.perf_counter()
    examples = load_examples(data_dir, seed=seed, limit_per_dataset=limit_per_dataset,
                             n_generated=n_generated, extra=extra)
    say(f"  {len(examples)} prompts loaded ({time.perf_counter() - started:.1f} s); "
        "extracting features ...")
    features = [extract(e.text) for e in examples]
    say(f"  features done ({time.perf_counter() - started:.1f} s); fitting 3 heads ...")
    classifier = fit_classifier(examples, seed, features, progress)
    say(f"  heads fitted ({time.perf_counter() - started:.1f} s)")
    classifier.metadata.update(provenance or {})
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
    table = strategy_table(test_examples, test_scores, [RulesPolicy.from_yaml(), learned])
    return TrainResult(classifier, learned, table, examples, features)


def train_from_records(records: Iterable[FeedbackRecord], classifier: Classifier,
                       learned: LearnedPolicy, out_dir: Path) -> dict[str, Any]:
    """Re-fit the learned policy to a deployment's own feedback and write it to
    ``out_dir/learned.json`` (the classifier is copied alongside, unchanged).

    Each record (its logged scores, else its messages scored by ``classifier``) is replayed,
    in order, as one online update of the plan that ran. Returns counts: records, correct,
    per strategy, and repeats (outcomes of a prompt already counted for its kind and
    strategy, learnt as feedback but left out of the evidence: ``LearnedPolicy.update``).

    Raises:
        ValueError: a record's ``correct`` is not a bool or a score in [0, 1].
    """
    counts: Counter[str] = Counter()
    correct = 0.0
    repeats_before = learned.repeats
    for record in records:
        scores = record.scores or classifier.score(record.messages)
        learned.add_reference(scores)
        learned.update(scores, record.plan, record.correct, spent_tokens=record.spent_tokens,
                       prompt_key=record.prompt_key)
        counts[record.plan.strategy] += 1
        correct += float(record.correct)
    learned.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save(out_dir)
    learned.save(out_dir / "learned.json")
    total = sum(counts.values())
    return {"records": total, "correct": correct,
            "by_strategy": {s: counts[s] for s in STRATEGIES if counts[s]},
            "repeats": learned.repeats - repeats_before}


# -- printing ---------------------------------------------------------------------------------

def format_metrics(metrics: dict[str, Any]) -> str:
    """The held-out metrics as plain-text tables (one per head, a row per dataset)."""
    lines = []
    for head, m in metrics.items():
        lines.append(f"\n{head}: reliability on the random held-out split within datasets "
                     "(Brier lower is better; const = base-rate predictor)")
        lines.append(f"  {'dataset':36} {'n':>6} {'label':>6} {'score':>6} {'AUC':>6} "
                     f"{'Brier':>6} {'const':>6} {'ECE':>6}")
        for name, row in [("ALL", m["overall"]), *m["by_dataset"].items()]:
            auc = "-" if row["auc"] is None else f"{row['auc']:.3f}"
            lines.append(f"  {name:36} {int(row['n']):>6} {row['mean_label']:>6.3f} "
                         f"{row['mean_score']:>6.3f} {auc:>6} {_num(row['brier'])} "
                         f"{_num(row['brier_constant'])} {row['ece']:>6.3f}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "     -" if value is None else f"{value:>6.3f}"


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
