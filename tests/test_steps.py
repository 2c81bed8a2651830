"""The dependent steps a prompt states (router_models/steps.py), and what the prior makes of
them."""

import pytest

from router_models.classifier import Classifier
from router_models.plan import Scores
from router_models.policies.prior import KIND_NAMES, archetype_of, kind_of
from router_models.steps import state_steps


@pytest.mark.parametrize("text, steps", [
    # Chains: quantities and what happens to them, moves, swaps, expressions.
    ("Tom has 12 apples. He gives 5 to Ann. Then he buys 3 more. How many does he have?", 3),
    ("Start with 7. Add 5. Multiply by 3. What is the result?", 3),
    ("Alice has a red ball, Bob has a blue ball. First, Alice and Bob swap balls. "
     "Then, Bob and Alice swap balls. Which ball does Alice have?", 2),  # a state, two swaps
    ("Take 3 steps. Turn left. Take 2 steps backward. Are you back at the start?", 3),
    ("Compute ((17 + 8) * 3 - 15) / 6.", 4),
    # A premise inside the question is a clause of its own.
    ("Luke bought 2 games and bought 2 more at a sale. If 2 of them broke, how many work?", 2),
    # Independent guesses: a bare question, options, instructions, a one-line sum.
    ("Which planet has the most moons?\nA) Earth\nB) Mars\nC) Saturn\nD) Venus", 0),
    ("About how long would it take to walk from Oslo to Rome?\nA. 900\nB. 9\nC. 90", 0),
    ("Roughly how many marbles fit in a bus? (A) 20 (B) 200 (C) 2000 (D) 20000", 0),
    ("Ines wrote down four scores to circle the highest. Option A: 66. Option B: 37. "
     "Option C: 33. Option D: 71. Which option is the highest score?", 0),
    ("Think step by step. Is 17 prime?", 0),
    ("What is 2 + 2?", 0),
    ("", 0),
])
def test_state_steps_counts_what_builds_the_answer(text, steps):
    assert state_steps(text) == steps


def test_a_chain_of_steps_is_a_chain_whatever_the_sequential_score():
    word_problem = Scores(difficulty=0.5, sequential=0.1, search=0.0, form="numeric", steps=3)
    guess = Scores(difficulty=0.5, sequential=0.1, search=0.0, form="choice", steps=0)
    assert archetype_of(word_problem) == "chain"
    assert KIND_NAMES[kind_of(word_problem)] == "hard/chain"
    assert archetype_of(guess) == "independent"
    # Facts come first for a prompt that states a premise or two: a question the collection
    # answers is searched; one that states three or more steps carries its own premises.
    assert archetype_of(Scores(0.5, 0.1, 0.9, steps=2)) == "search"
    assert archetype_of(Scores(0.5, 0.1, 0.9, steps=3)) == "chain"


def test_the_classifier_reports_the_steps_it_reads():
    scores = Classifier.load().score(
        "A shop has 45 apples. It sells 12 in the morning and receives 30 more, then sells "
        "half of what it has. How many apples remain?")
    assert scores.steps is not None and scores.steps >= 2
    assert archetype_of(scores) == "chain"
