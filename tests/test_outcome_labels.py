"""Chance-corrected sequential labels from paired direct / chain outcomes."""

from __future__ import annotations

import random

import pytest

from router_models.outcome_labels import latent_cells, sequential_label


def test_open_answers_give_the_plain_labels():
    # g = 0: chain right where direct wrong is 1, direct right is 0, both wrong has no weight.
    pairs = [(True, True)] * 3 + [(True, False)] + [(False, True)] * 4 + [(False, False)] * 2
    cells = latent_cells(pairs, 0.0)
    assert cells.as_tuple() == pytest.approx((0.3, 0.1, 0.4, 0.2))
    assert sequential_label(False, True, cells) == (1.0, 1.0)
    assert sequential_label(True, True, cells) == (0.0, 1.0)
    assert sequential_label(True, False, cells) == (0.0, 1.0)
    assert sequential_label(False, False, cells)[1] == 0.0


def test_the_method_of_moments_recovers_the_latent_cells_under_guessing():
    rng = random.Random(7)
    truth = (0.1, 0.05, 0.6, 0.25)  # (K_d, K_c) = 11, 10, 01, 00
    g = 0.5
    pairs = []
    for _ in range(40_000):
        kd, kc = rng.choices(((1, 1), (1, 0), (0, 1), (0, 0)), weights=truth)[0]
        pairs.append((bool(kd) or rng.random() < g, bool(kc) or rng.random() < g))
    assert latent_cells(pairs, g).as_tuple() == pytest.approx(truth, abs=0.02)


def test_a_lucky_direct_guess_on_a_coin_flip_task_still_reads_as_needing_a_chain():
    # Coin flips: the direct answer is a guess (right half the time), the chain knows.
    pairs = [(True, True)] * 45 + [(False, True)] * 45 + [(True, False)] * 5 + \
        [(False, False)] * 5
    cells = latent_cells(pairs, 0.5)
    label, weight = sequential_label(True, True, cells)
    assert label > 0.8 and weight > 0.8
    # Without the correction (g = 0) the same question would read as "no chain needed".
    assert sequential_label(True, True, latent_cells(pairs, 0.0))[0] == 0.0


def test_a_missing_direct_answer_is_marginalised():
    pairs = [(True, True)] * 2 + [(False, True)] * 6 + [(False, False)] * 2
    cells = latent_cells(pairs, 0.0)
    label, weight = sequential_label(None, True, cells)
    assert label == pytest.approx(0.75) and weight == pytest.approx(1.0)
    assert sequential_label(None, False, cells) == (0.0, 0.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="guess"):
        latent_cells([(True, True)], 1.0)
    with pytest.raises(ValueError, match="no question"):
        latent_cells([(None, True)], 0.0)
