"""The experiment statistics by simulation where the truth is known: interval coverage, the
repeated-look stopping rule's false positives and power, and Thompson-sampling shares."""

from __future__ import annotations

import numpy as np
import pytest

from router_models.experiments.stats import (
    ArmTotals,
    compare_accuracy,
    difference_sequence,
    mean_interval,
    mean_sequence,
    thompson_shares,
)


def totals(arm: str, outcomes: np.ndarray, tokens: float = 100.0) -> ArmTotals:
    n = len(outcomes)
    return ArmTotals(arm, n, n, int(outcomes.sum()), tokens * n, tokens ** 2 * n)


def test_the_difference_interval_covers_the_true_difference_in_93_to_97_percent():
    rng = np.random.default_rng(11)
    runs, covered = 1000, 0
    for _ in range(runs):
        p_control, p_treatment = rng.uniform(0.3, 0.9, size=2)
        n_control, n_treatment = rng.integers(100, 800, size=2)
        compared = compare_accuracy(
            totals("control", rng.random(n_control) < p_control),
            totals("treatment", rng.random(n_treatment) < p_treatment))
        assert compared is not None
        low, high = compared.ci95
        covered += low <= p_treatment - p_control <= high
    assert 0.93 <= covered / runs <= 0.97, covered / runs


def _looks(rng: np.random.Generator, p_control: float, p_treatment: float, n: int, every: int
           ) -> list[tuple[ArmTotals, ArmTotals]]:
    a = np.cumsum(rng.random(n) < p_control)
    b = np.cumsum(rng.random(n) < p_treatment)
    return [(ArmTotals("control", k, k, int(a[k - 1])), ArmTotals("treatment", k, k,
                                                                  int(b[k - 1])))
            for k in range(every, n + 1, every)]


def test_with_equal_arms_the_repeated_look_rule_declares_a_winner_at_most_5_percent():
    rng = np.random.default_rng(12)
    runs, declared, naive = 300, 0, 0
    for _ in range(runs):
        p = float(rng.uniform(0.3, 0.9))
        looks = _looks(rng, p, p, 2000, 20)  # 100 looks at up to 2000 feedback per arm
        declared += any(difference_sequence(c, t).can_stop for c, t in looks)
        # the fixed-sample test, peeked at every 5th look, for contrast
        naive += any(compare_accuracy(c, t).p_value < 0.05  # type: ignore[union-attr]
                     for c, t in looks[4::5])
    assert declared / runs <= 0.05, declared / runs
    assert naive / runs > 0.10, naive / runs  # peeking at a fixed-sample test inflates it


def test_with_a_real_difference_the_rule_stops_and_names_the_better_arm():
    rng = np.random.default_rng(13)
    runs, right, wrong = 100, 0, 0
    for _ in range(runs):
        winners = {difference_sequence(c, t).winner for c, t in _looks(rng, 0.6, 0.75, 2000,
                                                                       50)}
        right += "treatment" in winners
        wrong += "control" in winners
    assert right / runs >= 0.9 and wrong == 0, (right, wrong)


def test_each_arms_sequence_covers_its_accuracy_at_every_look_at_once():
    rng = np.random.default_rng(14)
    runs, missed = 300, 0
    for _ in range(runs):
        p = float(rng.uniform(0.2, 0.9))
        hits = np.cumsum(rng.random(3000) < p)
        missed += any(not (lo <= p <= hi) for lo, hi in
                      (mean_sequence(int(hits[k - 1]), k, 0.05) for k in range(10, 3001, 10)))
    assert missed / runs <= 0.05, missed / runs


def test_thompson_shares_favour_the_better_arm_and_keep_the_floor():
    rng = np.random.default_rng(15)
    good, bad = totals("good", rng.random(200) < 0.9), totals("bad", rng.random(200) < 0.6)
    shares = thompson_shares([bad, good], floor=0.05)
    assert shares["good"] == pytest.approx(0.95, abs=0.01)
    assert shares["bad"] == pytest.approx(0.05, abs=0.01)
    assert thompson_shares([bad, good], floor=0.05) == shares  # same totals, same shares
    same = thompson_shares([totals("a", np.arange(200) % 2 == 0),
                            totals("b", np.arange(200) % 2 == 1)], floor=0.05)
    assert same["a"] == pytest.approx(0.5, abs=0.03)


def test_the_token_objective_can_prefer_the_cheaper_arm():
    rng = np.random.default_rng(16)
    cheap = totals("cheap", rng.random(300) < 0.80, tokens=200)
    dear = totals("dear", rng.random(300) < 0.85, tokens=2000)
    by_accuracy = thompson_shares([cheap, dear], floor=0.0)
    by_value = thompson_shares([cheap, dear], floor=0.0, objective="accuracy_minus_tokens",
                               lambda_per_1k_tokens=0.1)
    assert by_accuracy["dear"] > 0.5 > by_value["dear"]


def test_mean_tokens_interval_is_students_t():
    values = np.array([100.0, 140.0, 90.0, 210.0, 160.0])
    t = ArmTotals("a", len(values), 0, 0, float(values.sum()), float((values ** 2).sum()))
    from scipy import stats
    expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                scale=stats.sem(values))
    assert mean_interval(t) == pytest.approx(expected)
