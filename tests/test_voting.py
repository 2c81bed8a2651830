"""Majority vote and the Adaptive-Consistency stopping rule."""

from __future__ import annotations

import pytest

from router_models.voting import Ballot, is_settled, stop_probability, tally, winner


def test_plurality_wins_and_answerless_ballots_do_not_vote():
    counts = tally([Ballot("4"), Ballot(None), Ballot("5"), Ballot("4"), Ballot("")])
    assert counts == {"4": 2.0, "5": 1.0}
    assert winner(counts) == "4"


def test_ties_go_to_the_first_answer_and_weights_count():
    assert winner(tally([Ballot("a"), Ballot("b")])) == "a"
    assert winner(tally([Ballot("a", 0.2), Ballot("b", 0.9)])) == "b"
    assert winner({}) is None


def test_beta_rule_matches_the_closed_form():
    # Beta(5, 1): P(p > 0.5) = 1 - 0.5**5
    assert stop_probability({"x": 4.0}) == pytest.approx(1 - 0.5 ** 5)
    assert stop_probability({}) == 0.0


def test_a_unanimous_vote_settles_and_a_split_one_does_not():
    assert is_settled({"7": 5.0}, remaining=11)
    assert not is_settled({"7": 3.0, "8": 2.0}, remaining=11)
    assert not is_settled({"7": 1.0}, remaining=15)


def test_a_lead_that_remaining_samples_cannot_overturn_settles():
    assert is_settled({"a": 3.0, "b": 1.0}, remaining=1)
    assert not is_settled({"a": 3.0, "b": 1.0}, remaining=2, threshold=0.999)
